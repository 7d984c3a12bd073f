"""The apo command line: exit codes and output of probe, recommend, presets and config."""

import json
import subprocess

import apo


def run(apo_bin, *args, check=False):
    return subprocess.run([str(apo_bin), *map(str, args)], capture_output=True, text=True, check=check)


def test_probe_human_and_json(apo_bin):
    human = run(apo_bin, "probe", check=True)
    assert "CPU" in human.stdout and "CUDA" in human.stdout
    machine = json.loads(run(apo_bin, "probe", "--json", check=True).stdout)
    assert machine["cpu"]["logical_cores"] >= 1


def test_recommend_prints_a_config_that_loads(apo_bin, tmp_path):
    out = run(apo_bin, "recommend", "--profile", "speed_first", "--workflow", "wan_lightning", check=True)
    assert out.stdout.startswith("# apo recommend: hardware preset")
    saved = tmp_path / "recommended.json"
    saved.write_text(out.stdout)
    config = apo.Config.load(str(saved)).to_dict()
    assert config["profile_name"] == "speed_first"
    assert config["wan_optimization"]["use_lightning_lora"] is True

    report = json.loads(run(apo_bin, "recommend", "--json", check=True).stdout)
    assert report["reasons"]
    assert report["config"]["performance_optimization"]["max_memory_usage_gb"] > 0


def test_recommend_rejects_an_unknown_profile(apo_bin):
    out = run(apo_bin, "recommend", "--profile", "fastest")
    assert out.returncode == 1
    assert 'unknown profile "fastest"' in out.stderr


def test_config_check_exit_codes(apo_bin, data_dir):
    good = data_dir / "guide" / "rtx4060ti.json"
    ok = run(apo_bin, "config", "check", "--portable", good)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{good}: ok"

    bad = data_dir / "bad" / "impossible_values.json"
    out = run(apo_bin, "config", "check", "--portable", good, bad)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 5
    assert all(line.startswith(f"{bad}:") for line in lines)


def test_config_check_against_this_machine(apo_bin, data_dir):
    # The guide's CPU block pins 8 cores; on a machine with fewer it fails unless --portable.
    machine = json.loads(run(apo_bin, "probe", "--json", check=True).stdout)
    path = data_dir / "guide" / "system_high_performance.json"
    missing = [core for core in range(8) if core not in machine["cpu"]["usable_cores"]]
    out = run(apo_bin, "config", "check", path)
    assert out.returncode == (1 if missing else 0)
    assert out.stderr.count("no such core") == len(missing)
    assert run(apo_bin, "config", "check", "--portable", path).returncode == 0


def test_config_show_layers_and_round_trips(apo_bin, data_dir, tmp_path):
    out = run(apo_bin, "config", "show", data_dir / "guide" / "storage_hdd.json",
              "--preset", "rtx3080", "--set", "performance_optimization.batch_size=3", check=True)
    shown = json.loads(out.stdout)
    assert shown["performance_optimization"]["batch_size"] == 3
    assert shown["performance_optimization"]["model_precision"] == "fp8_e4m3"
    assert shown["storage_optimization"]["temp_path"] == "/ssd/temp"
    saved = tmp_path / "shown.json"
    saved.write_text(out.stdout)
    assert run(apo_bin, "config", "show", saved, check=True).stdout == out.stdout


def test_config_show_reports_problems(apo_bin):
    out = run(apo_bin, "config", "show", "--set", "performance_optimization.batch_size=0")
    assert out.returncode == 1
    assert "out of range (expected 1 to 64, got 0)" in out.stderr


def test_usage_errors_exit_2(apo_bin):
    assert run(apo_bin).returncode == 2
    assert run(apo_bin, "config").returncode == 2
    assert run(apo_bin, "frobnicate").returncode == 2


def test_presets_list(apo_bin):
    listed = json.loads(run(apo_bin, "presets", "--json", check=True).stdout)
    names = {p["name"] for p in listed}
    assert {"rtx4090", "rtx3080", "rtx4060ti", "speed_first", "balanced", "quality_first"} <= names
    assert len([p for p in listed if p["kind"] == "workflow"]) == 8
