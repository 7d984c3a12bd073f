"""python -m apo.report: a figure from apo bench results, and a before/after comparison that
flags regressions in each metric's direction."""

import json
import subprocess
import sys

import pytest

from apo import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stats(values):
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "values": values}


def results(wall, peak_mib, judge):
    """A results file in the schema apo bench writes, for two workflows."""
    workflows = []
    for name, factor in (("newbie_anime", 1.0), ("hunyuan_t2v", 2.5)):
        workflows.append({
            "workflow": name, "runs": 3, "failed": 0, "failures": [],
            "metrics": {
                "wall_seconds": stats([wall * factor, wall * factor * 1.1, wall * factor * 0.9]),
                "model_load_seconds": stats([0.1, 0.12, 0.11]),
                "peak_memory_bytes": stats([peak_mib * factor * (1 << 20)] * 3),
                "rss_growth_bytes": stats([40.0 * (1 << 20), 41.0 * (1 << 20), 39.0 * (1 << 20)]),
                "judge_score": stats([judge, judge - 0.02, judge + 0.02]),
            },
        })
    return {
        "schema": "apo.workflow_benchmark/1",
        "machine": {"cpu": {"model": "test CPU"}, "cuda": {"devices": []}},
        "config": {"iterations": 3, "seed": 1, "configuration": "fp32 weights",
                   "cache_clearing": "a new engine per run"},
        "metrics": {
            "wall_seconds": {"unit": "s", "better": "lower"},
            "model_load_seconds": {"unit": "s", "better": "lower"},
            "peak_memory_bytes": {"unit": "bytes", "better": "lower"},
            "rss_growth_bytes": {"unit": "bytes", "better": "lower"},
            "judge_score": {"unit": "score", "better": "higher"},
            "gpu_utilization_percent": {"unit": "%", "better": "neither"},
        },
        "workflows": workflows,
        "wall_seconds": 12.0,
    }


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    # The IHDR chunk: width and height, big-endian, after the magic and the chunk header.
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert 600 <= width <= 4000 and 600 <= height <= 4000
    assert len(data) > 20_000  # three panels of bars and text, not an empty canvas


def test_report_of_one_results_file(tmp_path):
    after = write(tmp_path / "after.json", results(1.0, 30.0, 0.8))
    out = tmp_path / "report.png"
    run = subprocess.run([sys.executable, "-m", "apo.report", str(after), "-o", str(out)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout
    check_png(out)


def test_report_comparing_two_files_flags_regressions(tmp_path, capsys):
    before = write(tmp_path / "before.json", results(1.0, 30.0, 0.8))
    # Slower by 30%, memory the same, judge score better.
    after = write(tmp_path / "after.json", results(1.3, 30.0, 0.9))
    out = tmp_path / "compare.png"
    assert report.main([str(after), str(before), "-o", str(out)]) == 0
    check_png(out)
    # Two workflows slower by 30%: two regressions; the better judge score is not one.
    assert "(2 regression(s))" in capsys.readouterr().out
    assert report.plot(after, tmp_path / "loose.png", before, threshold=0.5) == 0


def test_directions_and_threshold():
    assert report.verdict("lower", 0.2, 0.1) == "regression"
    assert report.verdict("lower", -0.2, 0.1) == "improvement"
    assert report.verdict("higher", -0.2, 0.1) == "regression"
    assert report.verdict("higher", 0.05, 0.1) == ""
    assert report.verdict("neither", 5.0, 0.1) == ""
    assert report.verdict("lower", 0.2, 0.1, beyond_noise=False) == ""
    assert report.relative_change(0.0, 0.0) == 0.0
    assert report.relative_change(2.0, 3.0) == pytest.approx(0.5)


def test_a_file_of_another_schema_is_refused(tmp_path, capsys):
    bad = write(tmp_path / "bad.json", {"schema": "other/1", "workflows": []})
    assert report.main([str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert "other/1" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
