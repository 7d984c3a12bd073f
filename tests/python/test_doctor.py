"""`apo doctor` on fixture /proc and /sys trees: it reads, reports each finding with the command
that would change it, and exits 0 on advice."""

import json
import subprocess


def doctor(apo_bin, *args):
    return subprocess.run([str(apo_bin), "doctor", *map(str, args)], capture_output=True, text=True)


def test_untuned_machine_gets_a_fix_for_each_finding(apo_bin, data_dir, tmp_path):
    out = doctor(apo_bin, "--json", "--root", data_dir / "doctor" / "untuned", "--models", tmp_path,
                 "--temp", tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    findings = {f["check"]: f for f in report["findings"]}
    assert findings["swappiness"]["status"] == "warn"
    assert "/proc/sys/vm/swappiness" in findings["swappiness"]["fix"]
    assert findings["open files"]["status"] == "warn"
    assert "ulimit -n 65536" in findings["open files"]["fix"]
    assert findings["transparent huge pages"]["status"] == "warn"


def test_tuned_machine_is_ok_and_the_table_reads(apo_bin, data_dir, tmp_path):
    root = data_dir / "doctor" / "tuned"
    report = json.loads(doctor(apo_bin, "--json", "--root", root, "--models", tmp_path, "--temp",
                               tmp_path).stdout)
    statuses = {f["check"]: f["status"] for f in report["findings"]}
    for check in ("cpu governor", "open files", "swappiness", "locked memory", "transparent huge pages"):
        assert statuses[check] == "ok", statuses
    table = doctor(apo_bin, "--root", root, "--models", tmp_path, "--temp", tmp_path)
    assert table.returncode == 0
    assert "swappiness" in table.stdout


def test_a_tree_that_does_not_exist_is_unknown_not_a_crash(apo_bin, tmp_path):
    out = doctor(apo_bin, "--json", "--root", tmp_path / "nowhere", "--models", tmp_path, "--temp",
                 tmp_path)
    assert out.returncode == 0, out.stderr
    statuses = {f["check"]: f["status"] for f in json.loads(out.stdout)["findings"]}
    assert statuses["swappiness"] == "unknown"
