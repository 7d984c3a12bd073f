#!/usr/bin/env python3
"""Prints benchmark JSON reports (the contract in benchmarks/README.md) as one short table.

    python3 benchmarks/report.py build/release/bench_*.json
"""

import json
import sys


def main(paths):
    rows = []
    machine = None
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        machine = machine or report.get("machine", {})
        for r in report["results"]:
            ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else "-"
            rows.append((report["benchmark"], r["case"], r["metric"], f"{r['value']:.4g} {r['unit']}", ratio))
    if not rows:
        return 1
    devices = ", ".join(d["name"] for d in machine.get("cuda", {}).get("devices", [])) or "no GPU"
    print(f"machine: {machine.get('cpu', {}).get('model', '?')}; {devices}")
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
