"""apo and the official safetensors package read each other's files exactly."""

import json
import subprocess

import pytest
import safetensors
import safetensors.torch
import torch

import apo.models


def sample():
    torch.manual_seed(3)
    return {
        "model.diffusion.blocks.0.weight": torch.randn(32, 16),
        "half": torch.randn(7, 3).half(),
        "brain": torch.randn(5).bfloat16(),
        "fp8_e4m3": torch.randn(4, 4).to(torch.float8_e4m3fn),
        "fp8_e5m2": torch.randn(4, 4).to(torch.float8_e5m2),
        "ids": torch.arange(11),
        "flags": torch.rand(6) > 0.5,
        "bytes": torch.arange(9, dtype=torch.uint8),
        "i16": torch.arange(-4, 4, dtype=torch.int16),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "scalar": torch.tensor(1.25),
        "empty": torch.empty(0, 3),
    }


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name].reshape(-1).view(torch.uint8), b[name].reshape(-1).view(torch.uint8)), name


def test_apo_reads_what_safetensors_wrote(tmp_path):
    path = tmp_path / "official.safetensors"
    tensors = sample()
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt", "note": "ü"})
    assert_same(apo.models.load_file(path), tensors)
    assert_same(apo.models.load_file(path, copy=True), tensors)
    assert apo.models.load_metadata(path) == {"format": "pt", "note": "ü"}


def test_safetensors_reads_what_apo_wrote(tmp_path):
    path = tmp_path / "apo.safetensors"
    tensors = sample()
    tensors["strided"] = torch.randn(6, 4).t()
    apo.models.save_file(tensors, path, metadata={"format": "pt"})
    assert_same(safetensors.torch.load_file(str(path)), {k: v.contiguous() for k, v in tensors.items()})
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_length % 8 == 0  # padded, so the data section stays aligned


def test_compressed_copies_load_the_same(apo_bin, tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = sample()
    safetensors.torch.save_file(tensors, str(path))
    for codec, suffix in (("zstd", ".zst"), ("xz", ".xz")):
        out = subprocess.run([str(apo_bin), "models", "compress", str(path), "--codec", codec],
                             capture_output=True, text=True, check=True)
        assert "ratio" in out.stdout
        assert_same(apo.models.load_file(str(path) + suffix), tensors)


def test_inspect_lists_what_safetensors_sees(apo_bin, tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(sample(), str(path), metadata={"format": "pt"})
    report = json.loads(subprocess.run([str(apo_bin), "models", "inspect", "--json", str(path)],
                                       capture_output=True, text=True, check=True).stdout)
    assert report["metadata"] == {"format": "pt"}
    with safetensors.safe_open(str(path), framework="pt") as f:
        expected = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    assert {t["name"]: t["shape"] for t in report["tensors"]} == expected


def test_corrupt_file_raises_a_typed_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(apo.Error, match="exceeds the 100000000-byte limit") as caught:
        apo.models.load_file(path)
    assert caught.value.code == "Corrupt"
    with pytest.raises(apo.NotFoundError):
        apo.models.load_file(tmp_path / "missing.safetensors")
