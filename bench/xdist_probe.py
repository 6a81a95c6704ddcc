"""A pytest plugin for bench_roundtrip.py: the pytest-xdist controller (or a run without xdist) writes its own CPU
seconds, and whether it imported torch and peft, to $BENCH_PROBE_OUT as JSON when it ends. Prints nothing."""
from __future__ import annotations

import json
import os
import resource
import sys


def pytest_unconfigure(config):
    path = os.environ.get("BENCH_PROBE_OUT")
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(path, "w") as fh:
        json.dump({"cpu": usage.ru_utime + usage.ru_stime, "torch": "torch" in sys.modules,
                   "peft": "peft" in sys.modules}, fh)
