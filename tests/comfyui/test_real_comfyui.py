"""The node pack inside a real ComfyUI, through its HTTP API.

COMFYUI_DIR (a ComfyUI source folder) and COMFYUI_PYTHON (its environment's python, with apo
installed against its torch) name the ComfyUI; without them every test here is skipped. The
server starts on loopback with --cpu and a temporary --base-directory whose custom_nodes holds
the pack (as comfyui-apo) and whose models are small random-weight SD1.5 ones
(make_checkpoint.py). Random weights: the tests check that graphs run, the images' count and
shape, and quantized against unquantized output, never image content. APO_BIN_DIR (the apo
command) enables the export test. Figures are printed (pytest -s) and written to
$APO_COMFYUI_FIGURES when set.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np
import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON")
HERE = pathlib.Path(__file__).resolve().parent
PACK_DIR = HERE.parents[1] / "bindings" / "comfyui"

pytestmark = pytest.mark.skipif(
    not (COMFYUI_DIR and COMFYUI_PYTHON and os.path.isfile(os.path.join(COMFYUI_DIR or "", "main.py"))),
    reason="no ComfyUI: set COMFYUI_DIR and COMFYUI_PYTHON to run the pack in a real ComfyUI")

NODES = ["APOQuantizeModel", "APOLoadDiffusionModel", "APOHardwareProfile", "APOSamplerSettings",
         "APOBatchSize", "APOPerformanceReport"]
FIGURES = {}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Comfy:
    def __init__(self, base, port, process, log):
        self.base, self.port, self.process, self.log = base, port, process, log

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")

    def submit(self, prompt, route="/prompt", **extra):
        body = dict(extra, prompt=prompt, prompt_id=str(uuid.uuid4()))
        return self.request("POST", route, body)["prompt_id"]

    def wait(self, prompt_id, timeout_s=300):
        end = time.time() + timeout_s
        while time.time() < end:
            h = self.request("GET", f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                entry = h[prompt_id]
                if entry["status"]["status_str"] != "success":
                    raise AssertionError(f"prompt failed: {json.dumps(entry['status'])[:3000]}\n{self.log_tail()}")
                return entry
            time.sleep(0.05)
        raise AssertionError(f"prompt {prompt_id} did not finish\n{self.log_tail()}")

    def run(self, prompt, **kw):
        return self.wait(self.submit(prompt, **kw))

    def images(self, entry, node):
        from PIL import Image
        out = []
        for img in entry["outputs"][node]["images"]:
            path = self.base / "output" / img.get("subfolder", "") / img["filename"]
            out.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64))
        return out

    def log_tail(self):
        return pathlib.Path(self.log).read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    os.symlink(PACK_DIR, base / "custom_nodes" / "comfyui-apo")
    sys.path.insert(0, str(HERE))
    subprocess.run([COMFYUI_PYTHON, str(HERE / "make_checkpoint.py"), COMFYUI_DIR, str(base / "models")],
                   check=True, capture_output=True)
    shutil.copy(base / "models/diffusion_models/tiny_sd15.safetensors",
                base / "models/diffusion_models/tiny_sd15_b.safetensors")
    port = _free_port()
    log = base / "server.log"
    process = subprocess.Popen(
        [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch"],
        cwd=COMFYUI_DIR, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    server = Comfy(base, port, process, log)
    start = time.time()
    while time.time() - start < 120:
        if process.poll() is not None:
            pytest.fail(f"ComfyUI exited\n{server.log_tail()}")
        try:
            server.request("GET", "/system_stats")
            break
        except OSError:
            time.sleep(0.2)
    FIGURES["startup_s"] = round(time.time() - start, 2)
    yield server
    process.terminate()
    process.wait(timeout=30)
    if os.environ.get("APO_COMFYUI_FIGURES"):
        pathlib.Path(os.environ["APO_COMFYUI_FIGURES"]).write_text(json.dumps(FIGURES, indent=2))
    print("figures:", json.dumps(FIGURES, indent=2))


def graph(model_node, prefix, steps=2, batch=1, seed=7, settings=None):
    """unet -> KSampler (64x64, CLIP-L prompt) -> TAESD decode -> SaveImage; model_node is the
    node (id "1") whose output 0 is the MODEL."""
    g = {
        "1": model_node,
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }
    if settings is not None:
        g.update(settings)
    return g


def unet(name="tiny_sd15.safetensors"):
    return {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}


def ssim(a, b):
    """Mean SSIM over 7x7 windows of the grey images (Wang et al. 2004 constants, range 255)."""
    a, b = a.mean(-1), b.mean(-1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = 7
    win = lambda x: np.lib.stride_tricks.sliding_window_view(x, (k, k)).mean(axis=(-1, -2))
    mu_a, mu_b = win(a), win(b)
    va, vb, cov = win(a * a) - mu_a ** 2, win(b * b) - mu_b ** 2, win(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return float(s.mean())


def test_object_info_lists_every_node(comfy):
    info = comfy.request("GET", "/object_info")
    for name in NODES:
        assert name in info, name
        assert info[name]["category"] == "apo"
    assert info["APOQuantizeModel"]["display_name"] == "APO Quantize Model"
    assert "tiny_sd15.safetensors" in info["APOLoadDiffusionModel"]["input"]["required"]["unet_name"][0]
    assert comfy.request("GET", "/apo/queue")["pending"] == []


def test_quantized_model_runs_close_to_unquantized(comfy):
    g = graph(unet(), "plain")
    for fmt, base in (("fp8_e4m3", 20), ("int8", 30)):
        g[str(base)] = {"class_type": "APOQuantizeModel", "inputs": {"model": ["1", 0], "format": fmt, "memory_fraction": 0.8}}
        g[str(base + 1)] = dict(g["6"], inputs=dict(g["6"]["inputs"], model=[str(base), 0]))
        g[str(base + 2)] = {"class_type": "VAEDecode", "inputs": {"samples": [str(base + 1), 0], "vae": ["7", 0]}}
        g[str(base + 3)] = {"class_type": "SaveImage", "inputs": {"images": [str(base + 2), 0], "filename_prefix": fmt}}
        g[str(base + 4)] = {"class_type": "APOPerformanceReport", "inputs": {"report": [str(base), 1]}}
    entry = comfy.run(g)
    plain = comfy.images(entry, "9")
    assert len(plain) == 1 and plain[0].shape == (64, 64, 3)
    for fmt, base in (("fp8_e4m3", 20), ("int8", 30)):
        q = comfy.images(entry, str(base + 3))
        assert q[0].shape == (64, 64, 3)
        FIGURES[f"ssim_{fmt}_vs_unquantized"] = round(ssim(plain[0], q[0]), 4)
        report = entry["outputs"][str(base + 4)]["text"][0]
        assert "linear layers quantized" in report and "MiB saved" in report
        FIGURES[f"quantize_report_{fmt}"] = report.splitlines()[1]
    assert FIGURES["ssim_int8_vs_unquantized"] > 0.9
    assert FIGURES["ssim_fp8_e4m3_vs_unquantized"] > 0.8


def test_apo_loader_cold_then_kept_conversion(comfy):
    loader = {"class_type": "APOLoadDiffusionModel",
              "inputs": {"unet_name": "tiny_sd15.safetensors", "format": "fp8_e4m3", "keep_converted": True}}
    reports = []
    for i in range(2):
        comfy.request("POST", "/free", {"unload_models": True, "free_memory": True})
        g = graph(loader, f"apo_load_{i}")
        g["40"] = {"class_type": "APOPerformanceReport", "inputs": {"report": ["1", 1]}}
        entry = comfy.run(g)
        assert comfy.images(entry, "9")[0].shape == (64, 64, 3)
        reports.append(entry["outputs"]["40"]["text"][0].splitlines()[0])
    assert "kept the conversion" in reports[0]
    assert "read the kept conversion" in reports[1]
    FIGURES["apo_loader_reports"] = reports
    assert any((comfy.base / "models" / "apo-converted").iterdir())


def test_sampler_settings_batch_size_and_profile_feed_stock_nodes(comfy):
    settings = {
        "10": {"class_type": "APOSamplerSettings", "inputs": {"profile": "speed_first", "workflow": "wan_lightning"}},
        "11": {"class_type": "APOBatchSize", "inputs": {"model": ["1", 0], "width": 64, "height": 64, "frames": 1,
                                                       "memory_fraction": 0.8, "max_batch": 2}},
        "12": {"class_type": "APOHardwareProfile", "inputs": {}},
        "13": {"class_type": "APOPerformanceReport", "inputs": {"report": ["12", 0]}},
    }
    g = graph(unet(), "settings", settings=settings)
    g["6"]["inputs"].update(steps=["10", 0], cfg=["10", 1], sampler_name=["10", 2], scheduler=["10", 3])
    g["5"]["inputs"]["batch_size"] = ["11", 0]
    entry = comfy.run(g)
    images = comfy.images(entry, "9")
    assert len(images) == 2 and all(i.shape == (64, 64, 3) for i in images)
    text = entry["outputs"]["13"]["text"][0]
    assert "ComfyUI device: cpu" in text and "recommendations:" in text


@pytest.mark.skipif(not os.environ.get("APO_BIN_DIR"), reason="APO_BIN_DIR (the apo command) is not set")
def test_export_for_stock_comfyui(comfy):
    models = comfy.base / "models" / "diffusion_models"
    out = models / "tiny_sd15_comfy_fp8.safetensors"
    subprocess.run([os.path.join(os.environ["APO_BIN_DIR"], "apo"), "models", "quantize", "--layout", "comfyui",
                    str(models / "tiny_sd15.safetensors"), str(out)], check=True, capture_output=True)
    g = graph(unet(out.name), "stock_fp8")
    g["20"] = dict(g["6"], inputs=dict(g["6"]["inputs"], model=["21", 0]))
    g["21"] = unet()
    g["22"] = {"class_type": "VAEDecode", "inputs": {"samples": ["20", 0], "vae": ["7", 0]}}
    g["23"] = {"class_type": "SaveImage", "inputs": {"images": ["22", 0], "filename_prefix": "stock_plain"}}
    entry = comfy.run(g)
    fp8, plain = comfy.images(entry, "9")[0], comfy.images(entry, "23")[0]
    assert fp8.shape == plain.shape == (64, 64, 3)
    FIGURES["ssim_comfyui_layout_fp8_vs_unquantized"] = round(ssim(plain, fp8), 4)
    assert "Using scaled fp8" in comfy.log_tail() or "scaled fp8" in pathlib.Path(comfy.log).read_text()
    assert FIGURES["ssim_comfyui_layout_fp8_vs_unquantized"] > 0.8


def _trace(comfy, route, tag):
    """8 one-step prompts alternating two UNet files; model loads (prompts whose loader ran) and
    the mean wait (submission to execution start)."""
    comfy.request("POST", "/free", {"unload_models": True, "free_memory": True})
    time.sleep(0.5)
    submitted = {}
    names = ["tiny_sd15.safetensors", "tiny_sd15_b.safetensors"] * 4
    for i, name in enumerate(names):
        g = graph(unet(name), f"{tag}_{i}", steps=1, seed=i)
        t = time.time()
        pid = comfy.submit(g, route=route)
        submitted[pid] = t
    loads, waits = 0, []
    for pid, t in submitted.items():
        entry = comfy.wait(pid)
        msgs = {m[0]: m[1] for m in entry["status"]["messages"]}
        if "1" not in msgs.get("execution_cached", {}).get("nodes", []):
            loads += 1
        waits.append(msgs["execution_start"]["timestamp"] / 1000.0 - t)
    return loads, float(np.mean(waits))


def test_apo_queue_drops_model_reloads(comfy):
    loads_plain, wait_plain = _trace(comfy, "/prompt", "fifo")
    loads_apo, wait_apo = _trace(comfy, "/apo/queue/prompt", "apoq")
    FIGURES["queue_trace"] = {"prompts": 8, "model_loads_comfyui_queue": loads_plain,
                              "model_loads_apo_queue": loads_apo, "mean_wait_s_comfyui_queue": round(wait_plain, 3),
                              "mean_wait_s_apo_queue": round(wait_apo, 3)}
    assert loads_apo < loads_plain
    report = comfy.request("GET", "/apo/report")
    assert report["summary"]["prompts"] >= 8
