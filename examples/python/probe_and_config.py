"""Probe the machine and load a configuration from Python.

    PYTHONPATH=build/release/python python examples/python/probe_and_config.py [CONFIG]
"""

import sys

import apo

machine = apo.probe()
print(f"apo {apo.__version__}: {machine['cpu']['model']}, {machine['cuda']['status']}")

try:
    path = sys.argv[1] if len(sys.argv) > 1 else None
    config = apo.Config.load(path) if path else apo.Config.from_json("{}", presets=["balanced"])
    print(config, config.to_dict()["performance_optimization"])
except apo.ConfigError as error:
    for problem in error.problems:
        print(problem["text"], file=sys.stderr)
    sys.exit(1)
