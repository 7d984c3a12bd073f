"""Unit tests of the APO nodes against a stand-in of ComfyUI's ModelPatcher interface.

The stand-in keeps what the nodes rely on, as comfy/model_patcher.py has it: clone() shares the
model and copies object_patches; add_object_patch records a replacement by dotted name;
get_model_object sees patches first; patch_model applies them with setattr and unpatch_model
restores the originals; size is what the memory manager reserves. comfy.utils.ProgressBar,
comfy.model_management.get_free_memory and comfy.samplers' lists are stood in the same way.
"""

import sys
import types

import pytest
import torch

# The stand-in ComfyUI modules must exist before the pack is imported.
_progress_calls = []


class _ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        _progress_calls.append((self.current, self.total))


_FREE_BYTES = {"value": 64 << 30}
comfy = types.ModuleType("comfy")
comfy.utils = types.ModuleType("comfy.utils")
comfy.utils.ProgressBar = _ProgressBar
comfy.model_management = types.ModuleType("comfy.model_management")
comfy.model_management.get_free_memory = lambda device=None, torch_free_too=False: _FREE_BYTES["value"]
comfy.samplers = types.ModuleType("comfy.samplers")
comfy.samplers.KSampler = type("KSampler", (), {
    "SAMPLERS": ["euler", "euler_ancestral", "dpmpp_2m", "ddim"],
    "SCHEDULERS": ["normal", "karras", "simple", "ddim_uniform"]})
for _name in ("comfy", "comfy.utils", "comfy.model_management", "comfy.samplers"):
    sys.modules.setdefault(_name, comfy if _name == "comfy" else getattr(comfy, _name.split(".")[1]))

from conftest import import_pack  # noqa: E402

pack = import_pack()
from comfyui_apo import apo_queue, nodes, quantize  # noqa: E402


def _get_attr(obj, name):
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _set_attr(obj, name, value):
    parts = name.split(".")
    parent = _get_attr(obj, ".".join(parts[:-1])) if len(parts) > 1 else obj
    old = getattr(parent, parts[-1])
    setattr(parent, parts[-1], value)
    return old


class ModelPatcherStandIn:
    """comfy.model_patcher.ModelPatcher's interface as the nodes use it."""

    def __init__(self, model, load_device="cpu", offload_device="cpu", size=0):
        self.model = model
        self.load_device, self.offload_device = load_device, offload_device
        self.size = size
        self.patches = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_size()

    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        return self.size

    def loaded_size(self):
        return 0

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.object_patches_backup = self.object_patches_backup
        return n

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return _get_attr(self.model, name)

    def patch_model(self):
        for k, v in self.object_patches.items():
            old = _set_attr(self.model, k, v)
            self.object_patches_backup.setdefault(k, old)
        return self.model

    def unpatch_model(self):
        for k, v in self.object_patches_backup.items():
            _set_attr(self.model, k, v)
        self.object_patches_backup.clear()

    def memory_required(self, shape):
        # ComfyUI's estimate is proportional to the latent's area times the batch.
        return shape[0] * shape[-1] * shape[-2] * 4096


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.to_q = torch.nn.Linear(width, width)
        self.ff = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))
        self.small = torch.nn.Linear(width, 8)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.ff(self.to_q(x)) + self.small(x).mean(-1, keepdim=True)


class BaseModel(torch.nn.Module):
    def __init__(self, width=256):
        super().__init__()
        torch.manual_seed(0)
        self.diffusion_model = torch.nn.Sequential(Block(width), Block(width))
        self.latent_format = types.SimpleNamespace(latent_channels=4, latent_dimensions=2, spacial_downscale_ratio=8)


def _patcher():
    return ModelPatcherStandIn(BaseModel())


def test_node_mappings_follow_comfyui_conventions():
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["APOQuantizeModel"] == "APO Quantize Model"
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        if name == "APOLoadDiffusionModel":
            continue  # its INPUT_TYPES lists ComfyUI's model folder
        types_ = cls.INPUT_TYPES()
        assert "required" in types_, name
        assert isinstance(cls.RETURN_TYPES, tuple), name
        assert callable(getattr(cls, cls.FUNCTION)), name
        assert cls.CATEGORY == "apo"
    assert pack.NODE_CLASS_MAPPINGS["APOPerformanceReport"].OUTPUT_NODE is True
    assert pack.QUEUE_FEEDER is None  # no PromptServer outside ComfyUI


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2", "int8"])
def test_quantize_clones_and_never_mutates_its_input(fmt):
    patcher = _patcher()
    x = torch.randn(3, 5, 256)
    before = {k: v.clone() for k, v in patcher.model.state_dict().items()}
    reference = patcher.model.diffusion_model(x)
    _progress_calls.clear()
    clone, report = nodes.APOQuantizeModel().quantize(patcher, fmt)
    assert clone is not patcher and patcher.object_patches == {}
    assert all(torch.equal(before[k], v) for k, v in patcher.model.state_dict().items())
    # The big linear layers are patched; the 8-output one is below MIN_ELEMENTS and kept.
    assert sorted(clone.object_patches) == sorted(
        f"diffusion_model.{i}.{n}" for i in range(2) for n in ("to_q", "ff.0", "ff.2"))
    assert "6 linear layers quantized, 2 kept" in report
    assert _progress_calls[-1] == (6, 6)
    layer = clone.object_patches["diffusion_model.0.ff.0"]
    assert isinstance(layer, quantize.APOQuantizedLinear)
    assert layer.weight_data.dtype == {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
                                       "int8": torch.int8}[fmt]
    assert layer.weight_scale.shape == (1024,)
    # Sampling applies the patches; the output stays close to the full-precision one.
    model = clone.patch_model()
    out = model.diffusion_model(x)
    clone.unpatch_model()
    assert isinstance(patcher.model.diffusion_model[0].to_q, torch.nn.Linear)
    rel = ((out - reference).norm() / reference.norm()).item()
    assert rel < {"int8": 0.02, "fp8_e4m3": 0.08, "fp8_e5m2": 0.15}[fmt]
    # The memory manager's reservation shrinks by what was saved.
    linear = [clone.get_model_object(n) for n in clone.object_patches]
    fp32_bytes = sum(l.in_features * l.out_features * 4 for l in linear)
    assert patcher.size - clone.size == fp32_bytes - sum(l.out_features * (l.in_features + 4) for l in linear)


def test_quantize_skips_layers_with_weight_patches_and_sees_earlier_patches():
    patcher = _patcher()
    patcher.patches["diffusion_model.0.to_q.weight"] = [("lora",)]
    clone, _ = quantize.quantize_model_patcher(patcher, "int8")
    assert "diffusion_model.0.to_q" not in clone.object_patches
    again, report = quantize.quantize_model_patcher(clone, "int8")
    assert report.layers_quantized == 0  # already quantized layers are not quantized twice
    assert again.object_patches == clone.object_patches


def test_auto_picks_by_free_memory():
    patcher = _patcher()
    node = nodes.APOQuantizeModel()
    _FREE_BYTES["value"] = 64 << 30
    clone, report = node.quantize(patcher, "auto")
    assert report.startswith("APO Quantize Model: none") and clone.object_patches == {}
    size_fp32 = patcher.size
    # Room for half the model: fp16/bf16 halves the linear weights.
    _FREE_BYTES["value"] = int(size_fp32 * 0.8 / 0.8)
    _, report = node.quantize(patcher, "auto", 0.8)
    assert "auto:" in report and ": none;" not in report.splitlines()[0]
    _FREE_BYTES["value"] = 1000
    _, report = node.quantize(patcher, "auto")
    assert "nothing fits" in report
    _FREE_BYTES["value"] = 64 << 30


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="unknown format 'fp4'"):
        quantize.quantize_model_patcher(_patcher(), "fp4")


def test_sampler_settings_from_presets():
    node = nodes.APOSamplerSettings()
    assert node.settings("balanced", "none") == (30, 7.5, "euler", "normal")
    assert node.settings("speed_first", "wan_lightning") == (4, 1.0, "euler", "simple")
    steps, cfg, sampler, scheduler = node.settings("quality_first", "hunyuan_quality")
    assert (steps, cfg, sampler, scheduler) == (75, 8.5, "ddim", "ddim_uniform")
    for value, kind in zip(node.settings("speed_first", "newbie_speed"), nodes.APOSamplerSettings.RETURN_TYPES):
        if isinstance(kind, list):
            assert value in kind


def test_batch_size_is_the_largest_that_fits():
    patcher = _patcher()
    per_sample = 64 * 64 * 4096
    free = int((patcher.size + 5 * per_sample) / 0.8) + 1
    assert nodes.largest_batch(patcher, 512, 512, 1, free) == 5
    assert nodes.largest_batch(patcher, 512, 512, 1, 0) == 1
    assert nodes.largest_batch(patcher, 512, 512, 1, 1 << 50, max_batch=7) == 7
    _FREE_BYTES["value"] = free
    assert nodes.APOBatchSize().batch_size(patcher, 512, 512, 1) == (5,)
    _FREE_BYTES["value"] = 64 << 30


def test_performance_report_is_an_output_node_with_recommendations():
    from comfyui_apo.monitor import MONITOR
    MONITOR.clear()
    for i in range(4):
        MONITOR.record("prompt", wait_s=0.5 * i, switched_models=True, missed_deadline=False)
    out = nodes.APOPerformanceReport().report("upstream")
    text = out["result"][0]
    assert text.startswith("upstream") and "mean wait 0.750 s" in text
    assert "APO queue" in text and "switched models" in text
    MONITOR.clear()


def _prompt(model):
    return {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": model, "weight_dtype": "default"}},
            "2": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "steps": 2}}}


def test_queue_groups_prompts_by_model():
    clock = {"t": 0.0}
    s = apo_queue.PromptScheduler(clock=lambda: clock["t"])
    for i, m in enumerate("ABABAB"):
        s.submit(f"p{i}", _prompt(f"{m}.safetensors"), {}, ["2"])
    order = [s.next().prompt_id for _ in range(6)]
    assert order == ["p0", "p2", "p4", "p1", "p3", "p5"]
    assert s.next() is None


def test_queue_priority_aging_and_deadlines():
    clock = {"t": 0.0}
    s = apo_queue.PromptScheduler(priority_levels=10, aging_bound_s=100, clock=lambda: clock["t"])
    s.submit("low", _prompt("A.safetensors"), {}, [], priority=0)
    s.submit("high", _prompt("B.safetensors"), {}, [], priority=5)
    assert s.next().prompt_id == "high"
    clock["t"] = 100.0  # "low" has waited the aging bound: it is at the top level now
    s.submit("high2", _prompt("B.safetensors"), {}, [], priority=5)
    assert s.next().prompt_id == "low"
    s.record_run(10.0)
    s.submit("later", _prompt("A.safetensors"), {}, [], priority=9)
    s.submit("due", _prompt("C.safetensors"), {}, [], priority=0, deadline_s=15.0)
    assert s.next().prompt_id == "due"  # due within two run times
    with pytest.raises(ValueError, match="priority 10"):
        s.submit("x", {}, {}, [], priority=10)
    with pytest.raises(ValueError, match="deadline_s"):
        s.submit("x", {}, {}, [], deadline_s=-1)


def test_prompt_models_reads_model_file_inputs():
    p = _prompt("sub/A.safetensors")
    p["3"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"}}
    assert apo_queue.prompt_models(p) == (("CLIPLoader", "clip_name", "clip_l.safetensors"),
                                          ("UNETLoader", "unet_name", "sub/A.safetensors"))


def test_apo_linear_quantizes_on_load_and_takes_quantized_weights():
    from comfyui_apo import loading
    torch.manual_seed(1)
    ref = torch.nn.Linear(256, 512)
    x = torch.randn(4, 256)
    sd = {"weight": ref.weight.detach(), "bias": ref.bias.detach()}
    layer = loading.linear_class("fp8_e4m3")(256, 512, dtype=torch.float32)
    missing, unexpected = layer.load_state_dict(sd, strict=False)
    assert not missing and layer.format == "fp8_e4m3"
    y = layer(x)
    assert ((y - ref(x)).norm() / ref(x).norm()) < 0.08
    # What the kept-conversion store writes is read back as it is.
    parent = torch.nn.Sequential(layer)
    converted, meta = loading.quantized_state_dict({"0.weight": sd["weight"], "0.bias": sd["bias"]}, parent)
    assert converted["0.weight"].dtype == torch.float8_e4m3fn and "0.weight.scale" in converted
    assert '"format": "fp8_e4m3"' in meta["apo.quantization"]
    again = loading.linear_class("none")(256, 512, dtype=torch.float32)
    again.load_state_dict({"weight": converted["0.weight"], "weight.scale": converted["0.weight.scale"],
                           "bias": sd["bias"]}, strict=False)
    assert again.format == "fp8_e4m3" and torch.equal(again(x), y)
    plain = loading.linear_class("none")(256, 512, dtype=torch.float32)
    plain.load_state_dict(sd, strict=False)
    assert plain.format == "none" and torch.allclose(plain(x), ref(x))
    with pytest.raises(RuntimeError, match="shape"):
        loading.linear_class("none")(128, 512).load_state_dict(sd, strict=False)
