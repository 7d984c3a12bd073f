"""Makes the node pack importable as the package ``comfyui_apo`` (its folder's name has no
Python-safe spelling in a source tree, and ComfyUI imports it by path likewise)."""

import importlib.util
import pathlib
import sys

PACK_DIR = pathlib.Path(__file__).resolve().parents[2] / "bindings" / "comfyui"


def import_pack(name: str = "comfyui_apo"):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PACK_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
