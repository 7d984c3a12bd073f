"""Model files: safetensors reading and writing through apo (zstd/xz-compressed files too).

The functions mirror ``safetensors.torch``: ``load_file(path)`` gives a dict of tensors that view
the file's memory mapping (no copy), ``save_file(tensors, path, metadata)`` writes a file the
official package reads back exactly.
"""

from typing import Dict, Optional

import torch

from . import _core


def load_file(path, copy: bool = False) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file, by name, as CPU tensors.

    Without ``copy`` they view the file's mapping (copy-on-write: the file never changes);
    with it each tensor owns its memory.
    """
    named, _ = _core.safetensors_load(str(path), copy)
    return {name: torch.from_dlpack(capsule) for name, capsule in named}


def load_metadata(path) -> Dict[str, str]:
    """The file's ``__metadata__`` strings."""
    _, metadata = _core.safetensors_load(str(path), False)
    return dict(metadata)


def save_file(tensors: Dict[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes tensors (any device, any layout) to a safetensors file."""
    named = [(name, torch.utils.dlpack.to_dlpack(tensor.detach())) for name, tensor in tensors.items()]
    _core.safetensors_save(str(path), named, dict(metadata or {}))
