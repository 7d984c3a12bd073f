"""What the pack measures while ComfyUI runs, for the APO Performance Report node.

Nodes and the APO queue record events here (a quantization and the bytes it saved, a load and
its time, a prompt's wait and run time, a model switch); the report summarises them with the
machine's memory (apo.probe) and turns them into recommendations.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from typing import Dict, List

import apo


class PackMonitor:
    """A bounded, thread-safe record of the pack's events (the server thread and the executor
    thread both write)."""

    def __init__(self, history_size: int = 1000):
        self._lock = threading.Lock()
        self._events: Dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=history_size))

    def record(self, kind: str, **values) -> None:
        with self._lock:
            self._events[kind].append(dict(values, time=time.time()))

    def events(self, kind: str) -> List[dict]:
        with self._lock:
            return list(self._events.get(kind, ()))

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def summary(self) -> dict:
        quantized = self.events("quantize")
        loads = self.events("load")
        prompts = self.events("prompt")
        waits = [p["wait_s"] for p in prompts if "wait_s" in p]
        machine = apo.probe()
        return {
            "memory": machine["memory"],
            "cuda": [{"name": d.get("name"), "total_bytes": d.get("total_bytes"), "free_bytes": d.get("free_bytes")}
                     for d in machine.get("cuda", {}).get("devices", [])],
            "quantizations": len(quantized),
            "bytes_saved": sum(q.get("bytes_saved", 0) for q in quantized),
            "loads": len(loads),
            "load_seconds": [round(l["seconds"], 4) for l in loads],
            "conversions_read": sum(1 for l in loads if l.get("converted_read")),
            "prompts": len(prompts),
            "mean_wait_s": statistics.fmean(waits) if waits else None,
            "model_switches": sum(1 for p in prompts if p.get("switched_models")),
            "missed_deadlines": sum(1 for p in prompts if p.get("missed_deadline")),
        }

    def recommendations(self, summary: dict) -> List[str]:
        out = []
        memory = summary["memory"]
        total = memory.get("total_bytes") or 0
        available = memory.get("available_bytes") or 0
        if total and available < 0.2 * total:
            out.append(f"host memory is {100 * (1 - available / total):.0f}% used: quantize models "
                       "(APO Quantize Model, format auto) or load them with APO Load Diffusion Model in fp8")
        for d in summary["cuda"]:
            if d["total_bytes"] and d["free_bytes"] is not None and d["free_bytes"] < 0.2 * d["total_bytes"]:
                out.append(f"{d['name']}: under 20% free; fp8 weights halve an fp16 model")
        if summary["prompts"] >= 2 and summary["model_switches"] > summary["prompts"] / 2:
            out.append("more than half the prompts switched models: submit through the APO queue "
                       "(POST /apo/queue/prompt) so that prompts using the same models run together")
        if summary["missed_deadlines"]:
            out.append(f"{summary['missed_deadlines']} prompts missed their deadline: give them a higher "
                       "priority or use fewer steps (APO Sampler Settings, speed_first)")
        if summary["loads"] >= 2 and summary["conversions_read"] == 0 and any(
                l.get("format", "none") != "none" for l in self.events("load")):
            out.append("models are quantized on every load: turn on keep_converted in APO Load Diffusion Model")
        if not out:
            out.append("no problems seen")
        return out

    def text(self) -> str:
        s = self.summary()
        mib = 2 ** 20
        lines = [
            "APO Performance Report",
            f"host memory: {s['memory'].get('available_bytes', 0) / mib:.0f} MiB available of "
            f"{s['memory'].get('total_bytes', 0) / mib:.0f} MiB",
        ]
        for d in s["cuda"]:
            lines.append(f"{d['name']}: {(d['free_bytes'] or 0) / mib:.0f} MiB free of {(d['total_bytes'] or 0) / mib:.0f} MiB")
        lines.append(f"quantizations: {s['quantizations']}, {s['bytes_saved'] / mib:.1f} MiB saved")
        lines.append(f"loads: {s['loads']} ({s['conversions_read']} from kept conversions), seconds {s['load_seconds']}")
        wait = "n/a" if s["mean_wait_s"] is None else f"{s['mean_wait_s']:.3f} s"
        lines.append(f"APO queue: {s['prompts']} prompts, mean wait {wait}, {s['model_switches']} model switches, "
                     f"{s['missed_deadlines']} missed deadlines")
        lines.append("recommendations:")
        lines += [f"- {r}" for r in self.recommendations(s)]
        return "\n".join(lines)


#: The pack's one monitor.
MONITOR = PackMonitor()
