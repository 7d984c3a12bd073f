"""Tensors cross between torch and apo as versioned DLPack (DLManagedTensorVersioned) without a
copy, and safetensors headers are read without building tensors."""

import json
import struct
import time

import pytest
import torch

import apo
import apo.models
from apo import _core


def test_tensors_cross_both_ways_without_a_copy():
    codes = torch.randint(-127, 128, (16, 32), dtype=torch.int8)
    scales = torch.rand(16) + 0.5
    q = apo.QTensor(codes, scales, "int8")  # torch -> apo
    assert q.data.data_ptr() == codes.data_ptr()  # ... and back, still the same memory
    assert q.scales.data_ptr() == scales.data_ptr()
    codes[0, 0] = 5
    assert int(q.data[0, 0]) == 5
    assert q.scaling == "per_row" and q.original_dtype == torch.float32


def test_the_capsules_are_versioned(monkeypatch):
    seen = []
    real = torch.from_dlpack

    def spy(obj, *args, **kwargs):
        seen.append(repr(obj))
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(torch, "from_dlpack", spy)
    q = apo.quantize(torch.randn(4, 8), "fp8_e4m3")
    q.data  # apo -> torch
    assert seen and all('"dltensor_versioned"' in s for s in seen)


def test_a_tensor_without_dlpack_is_refused():
    with pytest.raises(apo.InvalidArgumentError, match="expected a tensor"):
        apo.quantize([1.0, 2.0], "int8")


def test_load_file_views_the_mapping(tmp_path):
    path = tmp_path / "w.safetensors"
    apo.models.save_file({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}, path)
    views = apo.models.load_file(path)
    again = apo.models.load_file(path, copy=True)
    assert torch.equal(views["a"], again["a"]) and views["b"].dtype == torch.bfloat16
    views["a"][0, 0] = 42.0  # copy-on-write: the file never changes
    assert float(apo.models.load_file(path)["a"][0, 0]) == 0.0


def sparse_file(path, shape, metadata):
    """A safetensors file whose one F32 tensor is a hole: headers are cheap, data is not."""
    nbytes = 4
    for size in shape:
        nbytes *= size
    header = {"__metadata__": metadata, "x": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + nbytes)


def test_metadata_and_inspect_read_the_header_only(tmp_path, monkeypatch):
    path = tmp_path / "big.safetensors"
    sparse_file(path, [1 << 16, 1 << 14], {"format": "pt", "apo.kind": "diffusion"})  # 4 GiB

    def no_tensors(*args, **kwargs):
        raise AssertionError("load_metadata built tensors")

    monkeypatch.setattr(_core, "safetensors_load", no_tensors)
    start = time.perf_counter()
    assert apo.models.load_metadata(path) == {"format": "pt", "apo.kind": "diffusion"}
    info = apo.models.inspect(path)
    assert time.perf_counter() - start < 2.0
    assert info == {"x": {"dtype": "F32", "shape": [1 << 16, 1 << 14], "bytes": 1 << 32, "offset": info["x"]["offset"]}}
    assert info["x"]["offset"] % 8 == 0 and info["x"]["offset"] > 8
