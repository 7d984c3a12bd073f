"""Loading a diffusion model through apo into ComfyUI's own model construction.

apo reads the file (``apo.models.load_file``: a memory-mapped safetensors file, or a zstd/xz
compressed one, and files ``apo models quantize`` wrote). ComfyUI then detects the model and builds
it as usual, with one change: its linear layers are ``APOLinear``, which quantize their weight as
it is handed over, one layer at a time (per-row fp8 or int8, by apo's ``torch.ops.apo.quantize``),
or take an already-quantized weight and its scales from the file as they are. The full-precision
weight of a layer is never copied: it is read from the mapping and dropped.

The kept-conversion store: with ``keep_converted``, the first load of a file in a format writes the
quantized state dict (apo's layout: data, ``<name>.scale``, the ``apo.quantization`` metadata)
under a name that hashes the source's path, size, modification time and the format; later loads
read that smaller file instead of quantizing again.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict

import torch

import apo
import apo.models

from .quantize import MIN_ELEMENTS

#: apo's layout (src/models/model.cpp): per-tensor scales beside the data, and the metadata key.
SCALE_SUFFIX = ".scale"
QUANTIZATION_METADATA_KEY = "apo.quantization"
LOAD_FORMATS = ("none", "fp8_e4m3", "fp8_e5m2", "int8")

_SAFETENSORS_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_FORMAT_OF_DTYPE = {torch.float8_e4m3fn: "fp8_e4m3", torch.float8_e5m2: "fp8_e5m2", torch.int8: "int8"}

#: File name endings the loader lists (apo reads compressed files too).
MODEL_SUFFIXES = (".safetensors", ".sft", ".safetensors.zst", ".safetensors.xz")


class APOLinear(torch.nn.Module):
    """A linear layer built empty by ComfyUI's model code and filled from the state dict.

    ``target_format`` "none" keeps weights as they come (cast to the compute dtype); an 8-bit
    format quantizes weights of at least MIN_ELEMENTS elements per row. A weight that arrives
    quantized (with ``<name>.scale``) is used as it is.
    """

    target_format = "none"

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.expects_bias = bias
        self.dtype = dtype
        self.format = "none"
        self.weight = None
        self.weight_data = None
        self.weight_scale = None
        self.bias = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        weight = state_dict.get(prefix + "weight")
        scale = state_dict.get(prefix + "weight" + SCALE_SUFFIX)
        bias = state_dict.get(prefix + "bias")
        if weight is None:
            missing_keys.append(prefix + "weight")
            return
        if tuple(weight.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"{prefix}weight has shape {tuple(weight.shape)}, expected "
                              f"{(self.out_features, self.in_features)}")
            return
        self.weight = self.weight_data = self.weight_scale = None
        if scale is not None:
            fmt = _FORMAT_OF_DTYPE.get(weight.dtype)
            if fmt is None:
                error_msgs.append(f"{prefix}weight has a scale but dtype {weight.dtype}")
                return
            self.format = fmt
            self.weight_data = torch.nn.Parameter(weight, requires_grad=False)
            self.weight_scale = torch.nn.Parameter(scale.to(torch.float32), requires_grad=False)
        elif self.target_format != "none" and weight.numel() >= MIN_ELEMENTS:
            data, scales = torch.ops.apo.quantize(weight, self.target_format, "per_row")
            self.format = self.target_format
            self.weight_data = torch.nn.Parameter(data, requires_grad=False)
            self.weight_scale = torch.nn.Parameter(scales, requires_grad=False)
        else:
            self.format = "none"
            dtype = self.dtype if self.dtype is not None else weight.dtype
            self.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
        if bias is not None:
            dtype = self.dtype if self.dtype is not None else bias.dtype
            self.bias = torch.nn.Parameter(bias.to(dtype), requires_grad=False)
        elif self.expects_bias:
            missing_keys.append(prefix + "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.format == "none":
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)
        with torch.no_grad():  # apo.qlinear has no backward: inference only
            return torch.ops.apo.qlinear(x, self.weight_data, self.weight_scale, self.format, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


def linear_class(target_format: str):
    """An APOLinear subclass that quantizes to ``target_format`` on load."""
    if target_format not in LOAD_FORMATS:
        raise ValueError(f"unknown format '{target_format}'; expected one of {', '.join(LOAD_FORMATS)}")
    return type(f"APOLinear_{target_format}", (APOLinear,), {"target_format": target_format})


def converted_path(store_dir: str, source: str, target_format: str) -> str:
    """Where the conversion of ``source`` to ``target_format`` is kept: the name hashes the
    source's identity, so a changed file or another format never reads a stale copy."""
    st = os.stat(source)
    identity = f"{os.path.abspath(source)}|{st.st_size}|{st.st_mtime_ns}|{target_format}|per_row|{MIN_ELEMENTS}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    stem = os.path.basename(source).split(".")[0]
    return os.path.join(store_dir, f"{stem}.{target_format}.{digest}.safetensors")


def quantized_state_dict(sd: Dict[str, torch.Tensor], model: torch.nn.Module, prefix: str = ""):
    """The state dict with the weights of ``model``'s quantized APOLinear layers replaced by their
    data and scales, and the ``apo.quantization`` metadata (apo's layout)."""
    out = dict(sd)
    originals = {}
    spec = None
    for name, module in model.named_modules():
        if isinstance(module, APOLinear) and module.format != "none":
            key = f"{prefix}{name}.weight"
            if key in sd:
                originals[key] = _SAFETENSORS_DTYPE_NAMES.get(sd[key].dtype, "F32")
            out[key] = module.weight_data.detach().cpu()
            out[key + SCALE_SUFFIX] = module.weight_scale.detach().cpu()
            spec = module.format
    metadata = {}
    if spec is not None:
        metadata[QUANTIZATION_METADATA_KEY] = json.dumps(
            {"format": spec, "scaling": "per_row", "tensors": originals})
    return out, metadata


def source_dtype(path_metadata: Dict[str, str], sd: Dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype the file's floating-point weights had before apo quantized them (or have)."""
    info = path_metadata.get(QUANTIZATION_METADATA_KEY)
    if info:
        names = list(json.loads(info).get("tensors", {}).values())
        by_name = {v: k for k, v in _SAFETENSORS_DTYPE_NAMES.items()}
        if names:
            return by_name.get(max(set(names), key=names.count), torch.float32)
    counts: Dict[torch.dtype, int] = {}
    for t in sd.values():
        if t.is_floating_point() and t.dtype in _SAFETENSORS_DTYPE_NAMES:
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32
