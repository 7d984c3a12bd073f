"""apo: fast, memory-frugal diffusion workflows on libtorch.

The engine is C++ (libapo); this package is its Python face. Errors are typed: every apo error is
an ``apo.Error`` with ``.code`` and ``.context``; configuration problems raise ``apo.ConfigError``
(a ``ValueError``) whose ``.problems`` lists each one with its file, line and key.
"""

import json as _json

import torch as _torch  # noqa: F401  loads libtorch first; apo's extension links against it

from . import _core
from ._core import (
    Config,
    ConfigError,
    Error,
    InvalidArgumentError,
    NotFoundError,
    OutOfMemoryError,
)

__version__ = _core.__version__

__all__ = [
    "Config",
    "ConfigError",
    "Error",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfMemoryError",
    "__version__",
    "probe",
]


def probe(kernel_check: bool = False) -> dict:
    """This machine: CPU, memory, CUDA devices and NVML readings, as a dict.

    With ``kernel_check``, a small apo kernel runs on each CUDA device to show that apo's kernels
    were built for it.
    """
    return _json.loads(_core.probe_json(kernel_check))
