"""The Python package: version, probe, Config loading and typed errors."""

import json

import pytest

import apo


def test_version_matches_the_cli(apo_bin):
    import subprocess

    out = subprocess.run([apo_bin, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"apo {apo.__version__}"


def test_probe_is_a_dict_of_this_machine():
    machine = apo.probe()
    assert machine["cpu"]["logical_cores"] >= 1
    assert machine["memory"]["total_bytes"] > 0
    assert isinstance(machine["cuda"]["devices"], list)
    assert machine["apo_version"] == apo.__version__


def test_load_a_guide_block(data_dir):
    config = apo.Config.load(str(data_dir / "guide" / "rtx3080.json"))
    blocks = config.to_dict()
    assert blocks["performance_optimization"]["model_precision"] == "fp8_e4m3"
    assert blocks["attention_optimization"]["enable_attention_slicing"] is True
    assert "rtx" not in repr(config)  # repr names profile, precision and batch size
    assert "fp8_e4m3" in repr(config)


def test_from_json_with_presets_and_overrides():
    config = apo.Config.from_json(
        '{"generation": {"num_inference_steps": 12}}  # comment',
        presets=["rtx4090"],
        overrides=["performance_optimization.batch_size=3"],
    )
    d = config.to_dict()
    assert d["generation"]["num_inference_steps"] == 12
    assert d["performance_optimization"]["batch_size"] == 3
    assert d["performance_optimization"]["max_memory_usage_gb"] == 20.0


def test_round_trip():
    config = apo.Config.from_json("{}", presets=["rtx3080", "speed_first", "wan_lightning"])
    again = apo.Config.from_json(config.to_json())
    assert again == config
    assert again.to_json() == config.to_json()
    assert apo.Config() == apo.Config.from_json("{}")


def test_config_error_is_a_value_error_with_every_problem(data_dir):
    path = data_dir / "bad" / "impossible_values.json"
    with pytest.raises(ValueError) as caught:
        apo.Config.load(str(path))
    error = caught.value
    assert isinstance(error, apo.ConfigError)
    assert isinstance(error, apo.Error)
    assert error.code == "InvalidConfig"
    assert len(error.problems) == 5
    first = error.problems[0]
    assert first["source"] == str(path)
    assert first["line"] == 3
    assert first["key"] == "performance_optimization.max_memory_usage_gb"
    assert first["message"].startswith("out of range (expected more than 0")
    assert first["text"] in str(error)


def test_syntax_error_has_line_and_column():
    with pytest.raises(apo.ConfigError) as caught:
        apo.Config.from_json('{\n  "a": [1, 2,\n}', source="inline.json")
    (problem,) = caught.value.problems
    assert (problem["line"], problem["column"]) == (3, 1)
    assert problem["text"].startswith("inline.json:3:1: syntax error")


def test_missing_file_and_unknown_preset_are_config_errors(tmp_path):
    with pytest.raises(apo.ConfigError, match="no such file"):
        apo.Config.load(str(tmp_path / "missing.json"))
    with pytest.raises(apo.ConfigError, match='did you mean "balanced"'):
        apo.Config.from_json("{}", presets=["balance"])


def test_machine_check_rejects_cores_that_do_not_exist():
    text = json.dumps({"system_optimization": {"cpu_affinity": [0, 60000]}})
    apo.Config.from_json(text)  # portable: loads
    with pytest.raises(apo.ConfigError, match="no such core"):
        apo.Config.from_json(text, check_machine=True)


def test_wrong_argument_types_raise_type_error():
    with pytest.raises(TypeError):
        apo.Config.load(42)
