"""Reports that survive an interrupted run: SIGTERM handled like Ctrl-C, periodic atomic checkpoints, resume.

While a run goes on, the report at --out is rewritten atomically (temporary file + rename, see report.py) at
most every CHECKPOINT_INTERVAL_S seconds with the cells finished so far and `complete: false`; the final write
says `complete: true` only if every selected cell was recorded. So Ctrl-C, a CI timeout's SIGTERM, even a
SIGKILL of the runner leave a valid JSON report, never a truncated file. `--resume` reads that report back,
keeps its cells and runs only the missing ones; records are keyed by cell_id, so no cell is ever duplicated.
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

from harness.reporting.report import SCHEMA_VERSION, ReportError, read_report, version_tuple, write_report

CHECKPOINT_INTERVAL_S = 2.0
RESUME_VERSION_KEYS = ("python", "torch", "transformers", "peft", "safetensors", "accelerate")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be: the same clean shutdown path."""


@contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread."""
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_reason(exc: BaseException) -> tuple[str, int]:
    """(incomplete_reason, exit code) for an interrupt."""
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)", 128 + signal.SIGTERM
    return "interrupted (SIGINT)", 128 + signal.SIGINT


class ReportCheckpoints:
    """The records of a run, and the report file kept valid while they come in."""

    def __init__(self, path: str, previous: dict | None = None, interval_s: float = CHECKPOINT_INTERVAL_S):
        self.path, self.interval_s = path, interval_s
        self.records: dict[str, dict] = dict(previous or {})
        self._last = -float("inf")

    def add(self, record: dict) -> None:
        self.records[record["cell_id"]] = record
        if time.monotonic() - self._last >= self.interval_s:
            self.write(complete=False, reason="in progress: the run has not finished (or was killed)")

    def write(self, *, complete: bool, reason: str | None = None) -> dict:
        from harness.roundtrip.environment import environment

        self._last = time.monotonic()
        return write_report(self.path, list(self.records.values()), environment=environment("cpu"),
                            complete=complete, incomplete_reason=None if complete else reason)


def resume_records(path: str, environment: dict) -> dict[str, dict]:
    """The cells of an earlier (possibly interrupted) report at `path`, to be kept by a resumed run.
    A missing file resumes nothing; a file that is not a valid report, or was written with other versions,
    raises ReportError naming the path and the reason."""
    if not os.path.exists(path):
        return {}
    report = read_report(path)
    if version_tuple(report["schema_version"]) > version_tuple(SCHEMA_VERSION):  # its records have fields we lack
        raise ReportError(f"{path}: cannot resume: the report was written with report schema "
                          f"{report['schema_version']}, newer than the {SCHEMA_VERSION} this harness writes; "
                          "run without --resume to replace it")
    old = report.get("environment", {})
    changed = [f"{k} {old.get(k)} -> {environment.get(k)}" for k in RESUME_VERSION_KEYS
               if old.get(k) != environment.get(k)]
    if changed:
        raise ReportError(f"{path}: cannot resume: the report was written with other versions ({'; '.join(changed)});"
                          f" run without --resume to replace it")
    return {cell["cell_id"]: cell for cell in report["cells"]}
