#!/usr/bin/env python3
"""bench_models (Python): apo's safetensors loader against the loaders a PyTorch user runs.

On one file of bf16 weights (24 tensors of [3072, 3072], 432 MiB; 4 with --quick), in the page
cache, every loader's tensors are then read whole (every byte, on torch's threads), since the
mapped loaders only map the file:

  - apo.models.load_file (mapped views) against safetensors.torch.load_file (the official
    package, which maps the file too);
  - apo.models.load_file against torch.load(mmap=True, weights_only=True) of the same tensors
    saved by torch.save;
  - apo.models.load_file(copy=True) (tensors that own their memory) against the owned copies
    a user gets otherwise: safetensors.torch.load_file's tensors cloned, and torch.load without
    mmap.

Every loader's tensors are checked equal to the saved ones before a time is reported. Runs are
interleaved round-robin and medians reported. Writes the report of benchmarks/README.md:

    PYTHONPATH=build/release/python python3 benchmarks/bench_models.py --json FILE
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

try:
    import apo.models
except ImportError:  # run from the source tree without PYTHONPATH
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "build", "release", "python"))
    import apo.models

import safetensors
import safetensors.torch


def read_every_byte(tensors):
    # A maximum over 16-bit words reads each byte once, vectorized and on torch's threads
    # (ATen's integer sums are several times slower than the memory).
    return max(int(t.view(torch.int16).max()) for t in tensors.values())


def interleaved_medians(runs, min_runs, min_total_s):
    for run in runs:
        run()
    times = [[] for _ in runs]
    start = time.perf_counter()
    while len(times[0]) < min_runs or time.perf_counter() - start < min_total_s:
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - t0)
    return [sorted(t)[len(t) // 2] for t in times]


def machine():
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": {"model": model, "logical_cores": os.cpu_count()},
            "python": platform.python_version(), "torch": torch.__version__,
            "safetensors": safetensors.__version__, "torch_threads": torch.get_num_threads()}


def result(case, value_s, baseline_s):
    return {"case": case, "metric": "time", "value": value_s * 1e3, "unit": "ms",
            "baseline": baseline_s * 1e3, "ratio": baseline_s / value_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke test")
    args = parser.parse_args()

    torch.manual_seed(0)
    count = 4 if args.quick else 24
    weights = {f"blocks.{i}.attn.qkv.weight": (torch.randn(3072, 3072) * 0.02).to(torch.bfloat16)
               for i in range(count)}
    with tempfile.TemporaryDirectory(prefix="apo_bench_models_py_") as directory:
        st_path = os.path.join(directory, "model.safetensors")
        pt_path = os.path.join(directory, "model.pt")
        apo.models.save_file(weights, st_path)
        torch.save(weights, pt_path)
        size_mib = os.path.getsize(st_path) / 2**20

        loaders = {
            "apo mapped": lambda: apo.models.load_file(st_path),
            "apo copy": lambda: apo.models.load_file(st_path, copy=True),
            "safetensors": lambda: safetensors.torch.load_file(st_path),
            "safetensors clone": lambda: {k: v.clone()
                                          for k, v in safetensors.torch.load_file(st_path).items()},
            "torch mmap": lambda: torch.load(pt_path, mmap=True, weights_only=True),
            "torch": lambda: torch.load(pt_path, weights_only=True),
        }
        for name, load in loaders.items():
            loaded = load()
            if loaded.keys() != weights.keys() or not all(
                    torch.equal(loaded[k].view(torch.int16), weights[k].view(torch.int16))
                    for k in weights):
                sys.exit(f"output check failed: {name} did not load the saved tensors; "
                         "no time is reported for a wrong result")
        names = list(loaders)
        medians = interleaved_medians(
            [lambda load=loaders[n]: read_every_byte(load()) for n in names],
            5 if args.quick else 11, 1.0 if args.quick else 5.0)
        t = dict(zip(names, medians))

    threads = torch.get_num_threads()
    size = f"{size_mib:.0f} MiB, every byte read, {threads} threads"
    results = [
        result(f"load (mapped): apo.models.load_file vs safetensors.torch.load_file, {size}",
               t["apo mapped"], t["safetensors"]),
        result(f"load (mapped): apo.models.load_file vs torch.load(mmap=True) of torch.save, {size}",
               t["apo mapped"], t["torch mmap"]),
        result(f"load (owned copies): apo.models.load_file(copy=True) vs "
               f"safetensors.torch.load_file + clone, {size}", t["apo copy"], t["safetensors clone"]),
        result(f"load (owned copies): apo.models.load_file(copy=True) vs torch.load of torch.save, "
               f"{size}", t["apo copy"], t["torch"]),
    ]
    report = {"benchmark": "bench_models_python", "machine": machine(), "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    for r in results:
        print(f"{r['case']}: {r['value']:.1f} ms vs {r['baseline']:.1f} ms ({r['ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
