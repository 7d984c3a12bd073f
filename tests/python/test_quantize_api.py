"""apo.quantize / apo.dequantize / apo.QTensor, and torch.ops.apo.qlinear against a float
linear layer."""

import pytest
import torch

import apo

# Relative error of one element after a round trip, per format (half a unit in the last place of
# the format's mantissa, or half a step of int8's 127 levels of the row's largest value).
TOLERANCE = {"fp16": 2**-11, "bf16": 2**-8, "fp8_e4m3": 2**-4, "fp8_e5m2": 2**-3}


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8"])
def test_round_trips_within_the_format(fmt):
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    q = apo.quantize(w, fmt, name="w")
    assert q.shape == (32, 64) and q.format == fmt and q.name == "w"
    assert q.nbytes < q.original_nbytes
    back = apo.dequantize(q)
    assert back.dtype == torch.float32 and back.shape == w.shape
    if fmt == "int8":
        step = w.abs().amax(dim=1, keepdim=True) / 127
        assert ((back - w).abs() <= step / 2 + 1e-6).all()
    else:
        scale = q.scales[:, None] if q.scales is not None else 1.0
        bound = TOLERANCE[fmt] * w.abs() + (2**-9 * scale if fmt.startswith("fp8") else 0)
        assert ((back - w).abs() <= bound + 1e-7).all()
    assert apo.dequantize(q, torch.bfloat16).dtype == torch.bfloat16


def test_per_tensor_scaling_and_parts():
    w = torch.randn(8, 16)
    q = apo.quantize(w, "fp8_e4m3", scaling="per_tensor")
    assert q.scaling == "per_tensor" and q.scales.shape == (1,)
    rebuilt = apo.QTensor(q.data, q.scales, "fp8_e4m3", original_dtype=torch.bfloat16)
    assert rebuilt.scaling == "per_tensor" and rebuilt.original_dtype == torch.bfloat16
    assert torch.equal(rebuilt.dequantize(torch.float32), q.dequantize())
    with pytest.raises(apo.InvalidArgumentError, match="unknown format 'int4'"):
        apo.quantize(w, "int4")
    with pytest.raises(apo.InvalidArgumentError):
        apo.QTensor(q.data, torch.ones(3), "fp8_e4m3")  # 3 scales for 8 rows
    with pytest.raises(apo.InvalidArgumentError, match="apo.QTensor"):
        apo.dequantize(q.data)


@pytest.mark.parametrize("fmt, rtol", [("int8", 0.02), ("fp8_e4m3", 0.08)])
def test_qlinear_matches_a_float_linear(fmt, rtol):
    torch.manual_seed(1)
    linear = torch.nn.Linear(128, 48)
    x = torch.randn(4, 7, 128)
    q = apo.quantize(linear.weight.detach(), fmt)
    y = torch.ops.apo.qlinear(x, q.data, q.scales, fmt, linear.bias.detach())
    with torch.no_grad():
        expected = linear(x)
    assert y.shape == expected.shape
    error = (y - expected).norm() / expected.norm()
    assert error < rtol, float(error)
    # ... and equals the float linear over the dequantized weight
    dense = torch.nn.functional.linear(x, apo.dequantize(q), linear.bias.detach())
    torch.testing.assert_close(y, dense, rtol=1e-4, atol=1e-4)
