"""torch.ops.apo: the quantization operators are there after `import apo` and agree with the
same math written in torch."""

import pytest
import torch

import apo  # noqa: F401  registers torch.ops.apo.*


def reference_scales(w, fmt_max):
    return w.float().abs().amax(dim=1).clamp(1e-12, float.fromhex("0x1.fffp127")) / torch.tensor(
        [fmt_max]
    )


def test_the_operators_are_registered():
    for name in ("quantize", "dequantize", "qlinear"):
        assert hasattr(torch.ops.apo, name)


@pytest.mark.parametrize(
    "fmt, dtype, fmt_max",
    [("fp8_e4m3", torch.float8_e4m3fn, 448.0), ("fp8_e5m2", torch.float8_e5m2, 57344.0)],
)
def test_quantize_matches_torch_bit_for_bit(fmt, dtype, fmt_max):
    w = torch.randn(64, 200) * torch.rand(64, 1) * 3
    codes, scale = torch.ops.apo.quantize(w, fmt, "per_row")
    expected_scale = reference_scales(w, fmt_max)
    assert torch.equal(scale, expected_scale)
    expected = (w / expected_scale[:, None]).clamp(-fmt_max, fmt_max).to(dtype)
    assert torch.equal(codes.view(torch.uint8), expected.view(torch.uint8))
    restored = torch.ops.apo.dequantize(codes, scale, fmt, torch.float32)
    assert torch.equal(restored, codes.float() * scale[:, None])


def test_qlinear_matches_dequantize_then_linear():
    w = torch.randn(96, 64) * 0.05
    x = torch.randn(2, 5, 64)
    bias = torch.randn(96)
    codes, scale = torch.ops.apo.quantize(w, "int8")
    y = torch.ops.apo.qlinear(x, codes, scale, "int8", bias)
    expected = torch.nn.functional.linear(x, codes.float() * scale[:, None], bias)
    assert y.shape == (2, 5, 96)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_qlinear_infers_shapes_on_meta_tensors():
    x = torch.empty(3, 64, device="meta", dtype=torch.bfloat16)
    w = torch.empty(32, 64, device="meta", dtype=torch.float8_e4m3fn)
    y = torch.ops.apo.qlinear(x, w, torch.empty(32, device="meta"), "fp8_e4m3")
    assert y.shape == (3, 32) and y.dtype == torch.bfloat16 and y.device.type == "meta"


def test_bad_input_names_the_tensor():
    with pytest.raises(RuntimeError, match="weight: x has 63 input features"):
        codes, scale = torch.ops.apo.quantize(torch.randn(8, 64), "int8")
        torch.ops.apo.qlinear(torch.randn(2, 63), codes, scale, "int8")
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        torch.ops.apo.quantize(torch.tensor([[1.0, float("nan")]]), "fp8_e4m3")
    with pytest.raises(RuntimeError, match="unknown format 'int4'"):
        torch.ops.apo.quantize(torch.randn(4, 4), "int4")
    with pytest.raises(RuntimeError, match="scales have shape"):
        torch.ops.apo.dequantize(torch.zeros(4, 8, dtype=torch.int8), torch.ones(3), "int8", torch.float32)
