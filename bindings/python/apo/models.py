"""Model files: safetensors reading and writing through apo (zstd/xz-compressed files too).

The functions mirror ``safetensors.torch``: ``load_file(path)`` gives a dict of tensors that view
the file's memory mapping (no copy), ``save_file(tensors, path, metadata)`` writes a file the
official package reads back exactly. ``load_metadata`` and ``inspect`` read the header only.
Tensors cross between apo and torch as versioned DLPack, without a copy.
"""

from typing import Any, Dict, Optional

import torch

from . import _core


def load_file(path, copy: bool = False) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file, by name, as CPU tensors.

    Without ``copy`` they view the file's mapping (copy-on-write: the file never changes);
    with it each tensor owns its memory.
    """
    named, _ = _core.safetensors_load(str(path), copy)
    return named


def load_metadata(path) -> Dict[str, str]:
    """The file's ``__metadata__`` strings, from its header alone (no tensor is read)."""
    _, metadata = _core.safetensors_header(str(path))
    return dict(metadata)


def inspect(path) -> Dict[str, Dict[str, Any]]:
    """Each tensor's ``dtype`` (safetensors' name: "F32", "BF16", "F8_E4M3", ...), ``shape``,
    ``bytes`` and ``offset`` in the file, by name, from the header alone (no tensor is read)."""
    tensors, _ = _core.safetensors_header(str(path))
    return dict(tensors)


def save_file(tensors: Dict[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes tensors (any device, any layout) to a safetensors file."""
    _core.safetensors_save(str(path), {name: t.detach() for name, t in tensors.items()}, dict(metadata or {}))
