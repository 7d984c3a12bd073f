"""APO for ComfyUI: quantized models, apo's loader, hardware-aware settings and a model-grouping
prompt queue, built on apo's Python package (``pip install`` it into ComfyUI's environment).

Install this folder as ``ComfyUI/custom_nodes/comfyui-apo`` (not ``apo``: that name is the
package's)."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def _register_server_routes():
    # Only inside a running ComfyUI is there a PromptServer to extend.
    try:
        from server import PromptServer
    except ImportError:
        return None
    if getattr(PromptServer, "instance", None) is None:
        return None
    from .apo_queue import register_routes
    return register_routes(PromptServer.instance)


QUEUE_FEEDER = _register_server_routes()
