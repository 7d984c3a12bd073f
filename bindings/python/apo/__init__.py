"""apo: fast, memory-frugal diffusion workflows on libtorch.

The engine is C++ (libapo); this package is its Python face:

- ``apo.Engine``: requests in, ``concurrent.futures.Future`` of ``apo.Result`` out (asyncio too),
  with cancellation, progress callbacks and the model cache.
- ``apo.quantize`` / ``apo.dequantize`` and ``apo.QTensor``; the torch operators
  ``torch.ops.apo.quantize``, ``.dequantize`` and ``.qlinear`` are registered by ``import apo``.
- ``apo.models``: safetensors files (tensors that view the file, header-only inspection).
- ``apo.Config``: the guide's configuration, loaded and validated.

Errors are typed: every apo error is an ``apo.Error`` with ``.code`` (its ErrorCode name) and
``.context``; each code has its class (``apo.NotFoundError``, ``apo.OutOfMemoryError``, ...), which
also derives from the matching built-in (``ValueError``, ``LookupError``/``FileNotFoundError``,
``OSError``, ``MemoryError`` and ``torch.OutOfMemoryError``, ``TimeoutError``). Configuration
problems raise ``apo.ConfigError`` whose ``.problems`` lists each with its file, line and key.
"""

import json as _json

import torch as _torch  # noqa: F401  loads libtorch first; apo's libraries link against it

from . import _core
from ._core import (
    Config,
    ConfigError,
    CorruptError,
    CancelledError,
    Error,
    InternalError,
    WorkflowFailedError,
    InvalidArgumentError,
    IoError,
    NotFoundError,
    OutOfMemoryError,
    QTensor,
    RejectedError,
    Result,
    TimedOutError,
    UnsupportedError,
    error_class,
    error_codes,
)
from .engine import REFERENCE_WORKFLOWS, Engine, Lease, Workflow, reference_requests
from . import models

__version__ = _core.__version__

__all__ = [
    "CancelledError",
    "Config",
    "ConfigError",
    "CorruptError",
    "Engine",
    "Error",
    "InternalError",
    "WorkflowFailedError",
    "InvalidArgumentError",
    "IoError",
    "Lease",
    "NotFoundError",
    "OutOfMemoryError",
    "QTensor",
    "REFERENCE_WORKFLOWS",
    "RejectedError",
    "Result",
    "TimedOutError",
    "UnsupportedError",
    "Workflow",
    "__version__",
    "dequantize",
    "error_class",
    "error_codes",
    "models",
    "probe",
    "quantize",
    "reference_requests",
]


def probe(kernel_check: bool = False) -> dict:
    """This machine: CPU, memory, CUDA devices and NVML readings, as a dict.

    With ``kernel_check``, a small apo kernel runs on each CUDA device to show that apo's kernels
    were built for it.
    """
    return _json.loads(_core.probe_json(kernel_check))


def quantize(tensor: _torch.Tensor, format: str, *, scaling: "str | None" = None, name: str = "tensor") -> QTensor:
    """Quantizes a float32, float16 or bfloat16 tensor (CPU or CUDA) to ``format``.

    ``format`` is one of none, fp16, bf16, fp8_e4m3, fp8_e5m2, int8; fp8 and int8 scale per row
    (``scaling="per_row"``, the default: one float32 scale per ``tensor.shape[0]``) or per tensor
    (``"per_tensor"``). The result is an ``apo.QTensor``: ``.data`` (the codes), ``.scales``, and
    ``.dequantize()``. ``torch.ops.apo.quantize`` is the same as a torch operator (for
    ``torch.compile``), returning ``(data, scales)``.
    """
    return _core.quantize(tensor, format, scaling=scaling, name=name)


def dequantize(q: QTensor, dtype: "_torch.dtype | None" = None) -> _torch.Tensor:
    """The tensor ``q`` stands for, in ``dtype`` (default: the dtype it was quantized from).

    ``q`` is an ``apo.QTensor``; build one from stored parts with
    ``apo.QTensor(data, scales, format)``.
    """
    if not isinstance(q, QTensor):
        raise InvalidArgumentError(
            f"dequantize: expected an apo.QTensor, got {type(q).__name__}; "
            "wrap (data, scales) with apo.QTensor(data, scales, format)"
        )
    return q.dequantize(dtype)
