"""The APO nodes. Apart from comfy.samplers (whose sampler and scheduler lists are output types),
ComfyUI's modules (comfy.*, folder_paths) are imported where a node runs, so that the nodes are
unit tested with stand-ins of them."""

from __future__ import annotations

import json
import os
import time

import comfy.samplers
import torch

import apo

from . import loading
from .monitor import MONITOR
from .quantize import FORMATS, quantize_model_patcher

CATEGORY = "apo"

PROFILES = ("speed_first", "balanced", "quality_first")
WORKFLOW_PRESETS = ("none", "hunyuan_speed", "hunyuan_quality", "wan_lightning", "wan_inpainting",
                    "newbie_speed", "newbie_quality", "qwen_relighting", "qwen_layered")


def _progress(total: int):
    import comfy.utils
    return comfy.utils.ProgressBar(total)


class APOQuantizeModel:
    """MODEL -> MODEL whose diffusion model's linear layers keep per-row fp8 or int8 weights and
    run apo's qlinear; the input MODEL is not changed."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "format": (list(FORMATS), {"default": "auto"}),
            "memory_fraction": ("FLOAT", {"default": 0.8, "min": 0.05, "max": 1.0, "step": 0.05,
                                          "tooltip": "auto: the share of free memory the weights may use"}),
        }}

    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "report")
    FUNCTION = "quantize"
    CATEGORY = CATEGORY
    DESCRIPTION = "Quantizes the diffusion model's linear layers with apo (fp8 or int8, per-row scales)."

    def quantize(self, model, format, memory_fraction=0.8):
        import comfy.model_management
        free = comfy.model_management.get_free_memory(model.load_device) if format == "auto" else None
        bar = None

        def progress(done, total):
            nonlocal bar
            if bar is None:
                bar = _progress(total)
            bar.update_absolute(done, total)

        clone, report = quantize_model_patcher(model, format, free, memory_fraction, progress)
        MONITOR.record("quantize", format=report.format, bytes_saved=report.bytes_saved, seconds=report.seconds)
        return (clone, report.text())


def _diffusion_model_files():
    import folder_paths
    names = set()
    for base in folder_paths.get_folder_paths("diffusion_models"):
        if not os.path.isdir(base):
            continue
        for root, _, files in os.walk(base, followlinks=True):
            for f in files:
                if f.lower().endswith(loading.MODEL_SUFFIXES):
                    names.add(os.path.relpath(os.path.join(root, f), base))
    return sorted(names)


def _full_path(name: str) -> str:
    import folder_paths
    for base in folder_paths.get_folder_paths("diffusion_models"):
        path = os.path.join(base, name)
        if os.path.isfile(path) and os.path.commonpath([os.path.abspath(path), os.path.abspath(base)]) == os.path.abspath(base):
            return path
    raise FileNotFoundError(f"diffusion model '{name}' is not in {folder_paths.get_folder_paths('diffusion_models')}")


class APOLoadDiffusionModel:
    """file -> MODEL: apo reads the file (mapped; zstd/xz too), ComfyUI builds the model, linear
    layers quantized as they load, conversions kept for the next load."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "unet_name": (_diffusion_model_files(),),
            "format": (list(loading.LOAD_FORMATS), {"default": "fp8_e4m3"}),
            "keep_converted": ("BOOLEAN", {"default": True,
                                           "tooltip": "keep the quantized copy under models/apo-converted"}),
        }}

    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "report")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a diffusion model through apo: mapped or compressed safetensors, quantize on load."

    def load(self, unet_name, format, keep_converted):
        import folder_paths
        path = _full_path(unet_name)
        store = os.path.join(folder_paths.models_dir, "apo-converted")
        return load_diffusion_model(path, format, store if keep_converted else None)


def load_diffusion_model(path: str, fmt: str, store_dir=None):
    """(MODEL, report) for the diffusion model file at ``path``; see APOLoadDiffusionModel."""
    import comfy.model_management
    import comfy.ops
    import comfy.sd
    import comfy.utils

    start = time.perf_counter()
    source = path
    converted_read = False
    target = None
    if store_dir is not None and fmt != "none":
        target = loading.converted_path(store_dir, path, fmt)
        if os.path.isfile(target):
            source, converted_read = target, True
    bar = _progress(3)
    sd = apo.models.load_file(source)
    metadata = apo.models.load_metadata(source)
    bar.update_absolute(1)
    read_s = time.perf_counter() - start

    linear = loading.linear_class(fmt)
    operations = type("apo_operations", (comfy.ops.manual_cast,), {"Linear": linear})
    options = {"custom_operations": operations}
    if loading.QUANTIZATION_METADATA_KEY in metadata or any(t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for t in sd.values()):
        # The weights' own dtype would make ComfyUI pick fp8 compute: pick as for the source.
        params = comfy.utils.calculate_parameters(sd)
        options["dtype"] = comfy.model_management.unet_dtype(model_params=params,
                                                            weight_dtype=loading.source_dtype(metadata, sd))
    keep = dict(sd) if target is not None and not converted_read else None
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options)
    if patcher is None:
        raise RuntimeError(f"ComfyUI does not recognise the diffusion model in {path}")
    bar.update_absolute(2)
    wrote = False
    if keep is not None:
        prefix = ""
        converted, meta = loading.quantized_state_dict(keep, patcher.model.diffusion_model, prefix)
        if loading.QUANTIZATION_METADATA_KEY in meta:
            os.makedirs(store_dir, exist_ok=True)
            temporary = target + ".tmp"
            apo.models.save_file(converted, temporary, meta)
            os.replace(temporary, target)  # a half-written file is never read as a conversion
            wrote = True
    bar.update_absolute(3)
    seconds = time.perf_counter() - start
    quantized = sum(1 for m in patcher.model.diffusion_model.modules()
                    if isinstance(m, loading.APOLinear) and m.format != "none")
    MONITOR.record("load", path=path, format=fmt, seconds=seconds, read_seconds=read_s,
                   converted_read=converted_read, converted_written=wrote)
    report = (f"APO Load Diffusion Model: {os.path.basename(path)} as {fmt} in {seconds:.3f} s "
              f"(read {read_s:.3f} s); {quantized} linear layers quantized; "
              f"{'read the kept conversion ' + os.path.basename(source) if converted_read else ''}"
              f"{'kept the conversion ' + os.path.basename(target) if wrote else ''}")
    return (patcher, report.strip())


class APOHardwareProfile:
    """-> STRING: this machine as apo sees it (CPU, memory, CUDA devices) and ComfyUI's device."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("profile",)
    FUNCTION = "profile"
    CATEGORY = CATEGORY

    def profile(self):
        import comfy.model_management as mm
        machine = apo.probe()
        device = mm.get_torch_device()
        gib = 2 ** 30
        lines = [f"apo {machine['apo_version']} (libtorch {machine['torch_version']})",
                 f"CPU: {machine['cpu'].get('model', '?')}, {machine['cpu'].get('logical_cores', '?')} logical cores",
                 f"memory: {machine['memory']['available_bytes'] / gib:.1f} GiB available of "
                 f"{machine['memory']['total_bytes'] / gib:.1f} GiB",
                 f"CUDA: {machine['cuda'].get('status', '')}"]
        for d in machine["cuda"].get("devices", []):
            lines.append(f"  [{d.get('index')}] {d.get('name')}: {d.get('free_bytes', 0) / gib:.1f} GiB free of "
                         f"{d.get('total_bytes', 0) / gib:.1f} GiB, compute {d.get('compute_capability_major')}."
                         f"{d.get('compute_capability_minor')}")
        lines.append(f"ComfyUI device: {mm.get_torch_device_name(device)}, "
                     f"{mm.get_free_memory(device) / gib:.1f} GiB free, fp8 compute: {mm.supports_fp8_compute(device)}")
        return ("\n".join(lines),)


# Sampler names for the schedulers the presets name (ComfyUI's KSampler names).
_PRESET_SAMPLERS = {"euler_ancestral": ("euler_ancestral", "normal"), "ddim": ("ddim", "ddim_uniform"),
                    "dpm_solver_multistep": ("dpmpp_2m", "normal")}


def sampler_settings(profile: str, workflow: str):
    """(steps, cfg, sampler_name, scheduler) from apo's profile and workflow presets."""
    presets = [profile] + ([] if workflow == "none" else [workflow])
    cfg = apo.Config.from_json("{}", presets=presets).to_dict()
    gen = cfg["generation"]
    steps, guidance = gen["num_inference_steps"], gen["guidance_scale"]
    if gen.get("use_high_quality_scheduler"):
        sampler, scheduler = "dpmpp_2m", "karras"
    elif gen.get("use_fast_scheduler"):
        sampler, scheduler = "euler", "simple"
    else:
        sampler, scheduler = "euler", "normal"
    family = workflow.split("_")[0] + "_optimization" if workflow != "none" else None
    block = cfg.get(family, {}) if family else {}
    if block.get("use_lightning_lora"):
        steps, guidance = block["lightning_steps"], block.get("lightning_guidance_scale", 1.0)
        sampler, scheduler = "euler", "simple"
    else:
        if block.get("num_inference_steps"):
            steps = block["num_inference_steps"]
        if block.get("guidance_scale"):
            guidance = block["guidance_scale"]
        if block.get("scheduler") in _PRESET_SAMPLERS:
            sampler, scheduler = _PRESET_SAMPLERS[block["scheduler"]]
        if block.get("enable_karras_sigmas"):
            scheduler = "karras"
    return int(steps), float(guidance), sampler, scheduler


class APOSamplerSettings:
    """(profile, workflow preset) -> steps, cfg, sampler name, scheduler name for KSampler."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"profile": (list(PROFILES), {"default": "balanced"}),
                             "workflow": (list(WORKFLOW_PRESETS), {"default": "none"})}}

    # ComfyUI's own combo types, so that the outputs connect to KSampler's inputs.
    RETURN_TYPES = ("INT", "FLOAT", comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS)

    RETURN_NAMES = ("steps", "cfg", "sampler_name", "scheduler")
    FUNCTION = "settings"
    CATEGORY = CATEGORY

    def settings(self, profile, workflow):
        return sampler_settings(profile, workflow)


def largest_batch(model, width: int, height: int, frames: int, free_bytes: int,
                  memory_fraction: float = 0.8, max_batch: int = 64) -> int:
    """The largest batch whose activations (ComfyUI's own estimate, model.memory_required) and the
    model's weights not yet on the device fit ``memory_fraction`` of ``free_bytes``; at least 1."""
    latent = model.model.latent_format
    channels = latent.latent_channels
    down = getattr(latent, "spacial_downscale_ratio", 8)
    if getattr(latent, "latent_dimensions", 2) == 3:
        shape = lambda b: [b, channels, max(1, (frames - 1) // 4 + 1), height // down, width // down]
    else:
        shape = lambda b: [b * frames, channels, height // down, width // down]
    weights_to_load = max(0, model.model_size() - model.loaded_size())
    budget = memory_fraction * free_bytes - weights_to_load
    best = 0
    lo, hi = 1, max_batch
    while lo <= hi:  # memory_required grows with the batch
        mid = (lo + hi) // 2
        if model.memory_required(shape(mid)) <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return max(best, 1)


class APOBatchSize:
    """(MODEL, width, height, frames) -> INT: the largest batch that fits free memory."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "width": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
            "height": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
            "frames": ("INT", {"default": 1, "min": 1, "max": 4096}),
            "memory_fraction": ("FLOAT", {"default": 0.8, "min": 0.05, "max": 1.0, "step": 0.05}),
            "max_batch": ("INT", {"default": 64, "min": 1, "max": 4096}),
        }}

    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("batch_size",)
    FUNCTION = "batch_size"
    CATEGORY = CATEGORY

    def batch_size(self, model, width, height, frames, memory_fraction=0.8, max_batch=64):
        import comfy.model_management
        free = comfy.model_management.get_free_memory(model.load_device)
        return (largest_batch(model, width, height, frames, free, memory_fraction, max_batch),)


class APOPerformanceReport:
    """Output node: the pack's measurements, the machine's memory and recommendations."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"report": ("STRING", {"forceInput": True})}}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always runs: the report is of now

    def report(self, report=None):
        text = MONITOR.text()
        if report:
            text = report + "\n\n" + text
        return {"ui": {"text": [text], "summary": [json.dumps(MONITOR.summary())]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {
    "APOQuantizeModel": APOQuantizeModel,
    "APOLoadDiffusionModel": APOLoadDiffusionModel,
    "APOHardwareProfile": APOHardwareProfile,
    "APOSamplerSettings": APOSamplerSettings,
    "APOBatchSize": APOBatchSize,
    "APOPerformanceReport": APOPerformanceReport,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "APOQuantizeModel": "APO Quantize Model",
    "APOLoadDiffusionModel": "APO Load Diffusion Model",
    "APOHardwareProfile": "APO Hardware Profile",
    "APOSamplerSettings": "APO Sampler Settings",
    "APOBatchSize": "APO Batch Size",
    "APOPerformanceReport": "APO Performance Report",
}
