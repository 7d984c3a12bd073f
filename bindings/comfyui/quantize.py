"""Quantizing a ComfyUI model's linear layers with apo, without touching ComfyUI's model.

``quantize_model_patcher`` clones a ModelPatcher and, for each ``torch.nn.Linear`` of the
diffusion model, adds an object patch that replaces the layer with an ``APOQuantizedLinear``:
the weight kept as per-row fp8 or int8 with its float32 scales, the product computed by apo's
``torch.ops.apo.qlinear`` (``_scaled_mm`` on a GPU with fp8 GEMMs, a tiled decode elsewhere).
Object patches are how ComfyUI swaps parts of a model: they are applied when the model is loaded
for sampling and undone afterwards, so the input patcher and its model stay as they were.

Nothing here imports ComfyUI: the functions take the patcher's interface (``clone``,
``get_model_object``, ``add_object_patch``, ``patches``, ``load_device``, ``size``) and are unit
tested against a stand-in of it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

import apo  # noqa: F401  registers torch.ops.apo.*

#: Formats the node offers; ``auto`` lets choose_format decide.
FORMATS = ("auto", "fp8_e4m3", "fp8_e5m2", "int8")

#: Bytes per stored element of each candidate format (fp32 and the source dtype: its own size).
_ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1}

# Layers smaller than this (elements) save too little to pay for a kernel call of their own;
# apo's quantization.min_elements default (65536) for the same reason.
MIN_ELEMENTS = 65536


class APOQuantizedLinear(torch.nn.Module):
    """A linear layer whose weight apo keeps quantized: y = x W^T + b by torch.ops.apo.qlinear.

    The weight data, its scales and the bias are frozen Parameters, so ComfyUI's loader (which
    moves modules that have parameters) places them on the sampling device with the rest.
    """

    def __init__(self, data: torch.Tensor, scale: Optional[torch.Tensor], fmt: str,
                 bias: Optional[torch.Tensor], source_dtype: torch.dtype):
        super().__init__()
        self.format = fmt
        self.out_features, self.in_features = data.shape
        self.source_dtype = source_dtype
        self.weight_data = torch.nn.Parameter(data, requires_grad=False)
        self.weight_scale = None if scale is None else torch.nn.Parameter(scale, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # apo.qlinear has no backward: the layer is for inference (ComfyUI samples without grad).
        with torch.no_grad():
            return torch.ops.apo.qlinear(x, self.weight_data, self.weight_scale, self.format, self.bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as the layer computes with it."""
        return torch.ops.apo.dequantize(self.weight_data, self.weight_scale, self.format, dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format} per_row"


def quantize_linear(layer: torch.nn.Linear, fmt: str) -> APOQuantizedLinear:
    """The layer's weight quantized per row (one float32 scale per output feature)."""
    weight = layer.weight.detach()
    source_dtype = weight.dtype
    data, scale = torch.ops.apo.quantize(weight, fmt, "per_row")
    return APOQuantizedLinear(data, scale, fmt, layer.bias, source_dtype)


@dataclasses.dataclass
class LayerPlan:
    """One linear layer of the diffusion model and what happens to it."""
    name: str  # the patcher's object name, "diffusion_model.<path>"
    layer: torch.nn.Linear
    quantize: bool
    reason: str


def plan_layers(patcher, prefix: str = "diffusion_model") -> List[LayerPlan]:
    """Every linear layer under ``prefix`` (through the patcher's object patches, so an earlier
    patch is seen, not the layer under it), and whether to quantize it."""
    root = patcher.get_model_object(prefix)
    weight_patches = getattr(patcher, "patches", {}) or {}
    plans = []
    for path, module in root.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        name = f"{prefix}.{path}"
        layer = patcher.get_model_object(name)
        if not isinstance(layer, torch.nn.Linear):
            continue  # already replaced by an object patch (quantized before, or someone else's)
        if f"{name}.weight" in weight_patches:
            # A LoRA or other weight patch targets this weight: ComfyUI applies it to the layer's
            # weight at load time, which a quantized layer no longer has.
            plans.append(LayerPlan(name, layer, False, "has weight patches (LoRA)"))
        elif not layer.weight.is_floating_point():
            plans.append(LayerPlan(name, layer, False, f"weight dtype {layer.weight.dtype}"))
        elif layer.weight.numel() < MIN_ELEMENTS:
            plans.append(LayerPlan(name, layer, False, f"{layer.weight.numel()} elements < {MIN_ELEMENTS}"))
        else:
            plans.append(LayerPlan(name, layer, True, "quantized"))
    return plans


def quantized_bytes(weight: torch.Tensor, fmt: str) -> int:
    """Bytes of ``weight`` stored in ``fmt`` (per-row float32 scales for 8-bit formats)."""
    if fmt == "none":
        return weight.numel() * weight.element_size()
    rows = weight.shape[0]
    scales = 4 * rows if fmt in ("fp8_e4m3", "fp8_e5m2", "int8") else 0
    return weight.numel() * _ELEMENT_BYTES[fmt] + scales


def _snr_db(x: torch.Tensor, fmt: str) -> float:
    x = x.detach().to(torch.float32)
    if fmt in ("fp16", "bf16"):
        restored = x.to(torch.float16 if fmt == "fp16" else torch.bfloat16).to(torch.float32)
    else:
        data, scale = torch.ops.apo.quantize(x, fmt, "per_row")
        restored = torch.ops.apo.dequantize(data, scale, fmt, torch.float32)
    noise = float(((x - restored) ** 2).sum())
    signal = float((x ** 2).sum())
    return math.inf if noise == 0 else 10.0 * math.log10(max(signal, 1e-30) / noise)


@dataclasses.dataclass
class FormatChoice:
    format: str  # "none" when the model fits as it is
    weight_bytes: int
    budget_bytes: int
    fits: bool
    reason: str
    candidates: List[Tuple[str, int, float, bool]]  # (format, bytes, worst SNR dB, fits)


def choose_format(plans: List[LayerPlan], other_bytes: int, free_bytes: int,
                  memory_fraction: float = 0.8, sample_layers: int = 8) -> FormatChoice:
    """apo's dynamic precision rule (include/apo/quant/precision.hpp) for this model: the
    highest-quality format, ranked by the worst SNR measured on the model's own largest linear
    weights, whose weights fit in ``memory_fraction`` of the free memory; the smallest one when
    none fits. ``other_bytes``: the model's bytes that stay as they are (convolutions, norms)."""
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction {memory_fraction} is outside (0, 1]")
    chosen = [p for p in plans if p.quantize]
    source_dtype = chosen[0].layer.weight.dtype if chosen else torch.float32
    formats = ["none"]
    if source_dtype == torch.float32:
        formats += ["fp16", "bf16"]
    formats += ["int8", "fp8_e4m3", "fp8_e5m2"]
    sample = sorted(chosen, key=lambda p: p.layer.weight.numel(), reverse=True)[:sample_layers]
    budget = int(memory_fraction * free_bytes)
    candidates = []
    for fmt in formats:
        total = other_bytes + sum(quantized_bytes(p.layer.weight, fmt) for p in chosen)
        snr = math.inf if fmt == "none" else min((_snr_db(p.layer.weight, fmt) for p in sample), default=math.inf)
        candidates.append((fmt, total, snr, total <= budget))
    candidates.sort(key=lambda c: c[2], reverse=True)
    fitting = [c for c in candidates if c[3]]
    if fitting:
        best = fitting[0]
        reason = (f"{best[0]} is the best-quality format (worst SNR {best[2]:.1f} dB) whose "
                  f"{best[1] / 2**20:.1f} MiB fit {memory_fraction:.0%} of {free_bytes / 2**20:.0f} MiB free")
        return FormatChoice(best[0], best[1], budget, True, reason, candidates)
    smallest = min(candidates, key=lambda c: (c[1], -c[2]))
    reason = (f"nothing fits {budget / 2**20:.1f} MiB ({memory_fraction:.0%} of {free_bytes / 2**20:.0f} MiB free); "
              f"{smallest[0]} is the smallest at {smallest[1] / 2**20:.1f} MiB")
    return FormatChoice(smallest[0], smallest[1], budget, False, reason, candidates)


@dataclasses.dataclass
class QuantizeReport:
    format: str
    layers_quantized: int
    layers_kept: int
    bytes_before: int  # the linear weights chosen, as they were
    bytes_after: int   # the same weights quantized, with their scales
    model_bytes_before: int
    model_bytes_after: int
    seconds: float
    reason: str
    kept: Dict[str, str]

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def text(self) -> str:
        mib = 2 ** 20
        lines = [
            f"APO Quantize Model: {self.format}; {self.layers_quantized} linear layers quantized, "
            f"{self.layers_kept} kept, in {self.seconds:.2f} s",
            f"linear weights {self.bytes_before / mib:.1f} MiB -> {self.bytes_after / mib:.1f} MiB; "
            f"model {self.model_bytes_before / mib:.1f} MiB -> {self.model_bytes_after / mib:.1f} MiB "
            f"({self.bytes_saved / mib:.1f} MiB saved)",
        ]
        if self.reason:
            lines.append(self.reason)
        return "\n".join(lines)


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def quantize_model_patcher(patcher, fmt: str = "auto", free_bytes: Optional[int] = None,
                           memory_fraction: float = 0.8,
                           on_progress: Optional[Callable[[int, int], None]] = None):
    """A clone of ``patcher`` whose diffusion model's linear layers run quantized; the input is
    not changed. ``free_bytes`` (for ``auto``) is the free memory of the patcher's load device.
    Returns (clone, QuantizeReport)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
    start = time.perf_counter()
    plans = plan_layers(patcher)
    chosen = [p for p in plans if p.quantize]
    model_bytes = _module_bytes(patcher.get_model_object("diffusion_model"))
    linear_bytes = sum(p.layer.weight.numel() * p.layer.weight.element_size() for p in chosen)
    reason = ""
    if fmt == "auto":
        if free_bytes is None:
            raise ValueError("format auto needs the free memory of the load device")
        choice = choose_format(plans, model_bytes - linear_bytes, free_bytes, memory_fraction)
        fmt, reason = choice.format, "auto: " + choice.reason
    clone = patcher.clone()
    kept = {p.name: p.reason for p in plans if not p.quantize}
    if fmt == "none":
        return clone, QuantizeReport("none", 0, len(plans), linear_bytes, linear_bytes, model_bytes,
                                     model_bytes, time.perf_counter() - start, reason, kept)
    after = 0
    for i, plan in enumerate(chosen):
        if fmt in ("fp16", "bf16"):
            dtype = torch.float16 if fmt == "fp16" else torch.bfloat16
            q = APOQuantizedLinear(plan.layer.weight.detach().to(dtype), None, fmt,
                                   plan.layer.bias, plan.layer.weight.dtype)
        else:
            q = quantize_linear(plan.layer, fmt)
        after += quantized_bytes(plan.layer.weight, fmt)
        clone.add_object_patch(plan.name, q)
        if on_progress is not None:
            on_progress(i + 1, len(chosen))
    model_after = model_bytes - linear_bytes + after
    # ComfyUI's memory manager reserves the patcher's size on the device: the quantized size.
    if getattr(clone, "size", 0) > 0:
        clone.size = max(clone.size - (linear_bytes - after), 0)
    report = QuantizeReport(fmt, len(chosen), len(plans) - len(chosen), linear_bytes, after, model_bytes,
                            model_after, time.perf_counter() - start, reason, kept)
    return clone, report
