"""peft-compat: save -> load -> forward compatibility checks for PEFT adapters on tiny random-init models.

The layers, in the order data flows through them (each imports only from those before it; see README):

    harness.specs      case files, validation of their shape, the statuses, the known-issues table
    harness.roundtrip  families, adapters, steps, save/load modes, version shims: one cell's round trip
    harness.running    worker isolation, checkpointed reports, classification, CLI and pytest plugin
    harness.reporting  report and matrix schemas, merge, since-when, diff, render (no torch)

This module is the Python API: load cases, run a cell.
"""
import os

# Nothing is ever fetched from a model hub: force offline before huggingface_hub reads its settings.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Nothing the harness loads is unpickled: torch.load loads weights only, whatever the caller's environment says.
# peft <= 0.12 calls torch.load without weights_only, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns into a full
# unpickling (a planted adapter_model.bin would run its code); TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 makes every
# torch.load weights-only, even one that passes weights_only=False. torch reads both at each torch.load (and
# raises if both are set); forked cell workers share this os.environ, and subprocesses (pytest-xdist workers,
# tox) inherit it.
os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"

from harness.roundtrip.cell import cell_id  # noqa: E402
from harness.roundtrip.check import load_case_file, load_cases, read_case_file  # noqa: E402
from harness.running.cells import run_cell  # noqa: E402
from harness.specs.case import Case, CaseError  # noqa: E402

__all__ = ["Case", "CaseError", "load_case_file", "load_cases", "read_case_file", "run_cell", "cell_id"]
__version__ = "0.1.0"
