"""apo's typed errors: one class per ErrorCode, made from the C++ code table, with the built-in
classes hosts already catch, and C++ failures classified through the mapping the C ABI uses."""

import pytest
import torch

import apo

# The Python class of each ErrorCode and the built-ins it must also be.
EXPECTED = {
    "InvalidArgument": ("InvalidArgumentError", (ValueError,)),
    "InvalidConfig": ("ConfigError", (ValueError,)),
    "NotFound": ("NotFoundError", (LookupError, FileNotFoundError)),
    "Io": ("IoError", (OSError,)),
    "Corrupt": ("CorruptError", ()),
    "Unsupported": ("UnsupportedError", ()),
    "OutOfMemory": ("OutOfMemoryError", (MemoryError, torch.OutOfMemoryError)),
    "Cancelled": ("CancelledError", ()),
    "TimedOut": ("TimedOutError", (TimeoutError,)),
    "Rejected": ("RejectedError", ()),
    "Internal": ("InternalError", ()),
    "WorkflowFailed": ("WorkflowFailedError", ()),
}


def test_every_error_code_has_its_class():
    assert list(apo.error_codes) == list(EXPECTED)  # the table's order, every code
    assert list(apo.error_codes.values()) == list(range(1, 13))  # the C ABI's apo_status values
    for code, (name, builtins) in EXPECTED.items():
        cls = getattr(apo, name)
        assert apo.error_class(code) is cls
        assert cls.__module__ == "apo" and cls.__name__ == name
        assert issubclass(cls, apo.Error) and issubclass(cls, RuntimeError)
        for builtin in builtins:
            assert issubclass(cls, builtin), (name, builtin)
        assert cls.code == code  # also on instances raised from Python
        assert cls("x").code == code
    with pytest.raises(apo.InvalidArgumentError, match="unknown error code 'Nope'"):
        apo.error_class("Nope")


def test_cpp_errors_arrive_typed_with_code_and_context(tmp_path):
    with pytest.raises(apo.NotFoundError) as caught:
        apo.models.load_metadata(tmp_path / "missing.safetensors")
    assert caught.value.code == "NotFound"
    assert isinstance(caught.value, FileNotFoundError)
    assert "missing.safetensors" in str(caught.value)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(apo.CorruptError) as caught:
        apo.models.load_metadata(broken)
    assert caught.value.code == "Corrupt"

    with pytest.raises(apo.UnsupportedError, match="Double"):
        apo.quantize(torch.zeros(4, dtype=torch.float64), "int8")

    with pytest.raises(apo.InvalidArgumentError) as caught:
        apo.quantize(torch.tensor([1.0, float("nan")]), "int8", name="w")
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("w: ")

    with pytest.raises(apo.ConfigError) as caught:
        apo.Config.from_json('{"performance_optimization": {"batch_size": -1}}')
    assert caught.value.code == "InvalidConfig"
    assert caught.value.problems and caught.value.problems[0]["key"].endswith("batch_size")


def test_torch_allocation_failures_are_out_of_memory_errors():
    # torch's own failure inside apo's C++ (an allocation the host cannot make) comes through
    # the shared mapping: a typed apo error with torch's message, never a bare RuntimeError.
    huge = torch.zeros(1).expand(1 << 40)
    with pytest.raises(apo.Error) as caught:
        apo.quantize(huge, "int8")
    assert caught.value.code == "OutOfMemory"
    assert type(caught.value) is apo.error_class(caught.value.code)
