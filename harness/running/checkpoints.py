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

from harness.reporting.report import (SCHEMA_VERSION, ReportError, cell_errors, describe_error, read_report,
                                      version_tuple, write_report)

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


def admit(record: dict) -> dict:
    """`record` when the report schema accepts it; otherwise a record of the same cell that says the harness
    produced an invalid one (status "crashed", exception_type "HarnessError", the schema problem in the
    message), so that one bad record never costs the report, or the other cells, of a run."""
    errors = cell_errors(record)
    if not errors:
        return record
    from harness.roundtrip.cell import TOLERANCES
    from harness.roundtrip.environment import environment

    problem = describe_error(errors[0])
    bad = {str(e.absolute_path[0]) for e in errors if e.absolute_path}
    was = record.get("status")
    kept = {k: v for k, v in record.items() if k not in bad and k not in ("observed_status", "known_issue_mismatch")}
    cell_id = record.get("cell_id") if isinstance(record.get("cell_id"), str) else "unknown cell"
    blank = {"cell_id": cell_id, "case_id": cell_id.split("[")[0], "family": "unknown", "adapter": "unknown",
             "device": "cpu", "dtype": "fp32", "stage": None, "max_abs_diff": None, "seconds": {}, "warnings": [],
             "missing_keys": None, "unexpected_keys": None, "non_adapter_keys": None, "environment": environment("cpu")}
    fixed = {**blank, **kept}
    fixed["tolerance"] = kept.get("tolerance", TOLERANCES.get((fixed["device"], fixed["dtype"]), 1e-5))
    fixed.update(status="crashed", exception_type="HarnessError", known_issue=None, message=(
        f"the harness produced a record that the report schema {SCHEMA_VERSION} rejects ({problem}); the record "
        f"said status {was!r}. This is a bug of the harness, or a case value that validation let through: the "
        f"fields {', '.join(sorted(bad)) or '(none)'} were dropped"))
    if cell_errors(fixed):  # the identity fields themselves were broken: keep only what is sure to be valid
        fixed = {**blank, "tolerance": 1e-5, "status": "crashed", "exception_type": "HarnessError",
                 "known_issue": None, "message": fixed["message"]}
    return fixed


class ReportCheckpoints:
    """The records of a run, and the report file kept valid while they come in."""

    def __init__(self, path: str, previous: dict | None = None, interval_s: float = CHECKPOINT_INTERVAL_S):
        self.path, self.interval_s = path, interval_s
        self.records: dict[str, dict] = dict(previous or {})
        self._last = -float("inf")

    def add(self, record: dict) -> dict:
        """Keep `record` (admitted: see `admit`) and rewrite the report if the last write is old enough.
        Returns the record as kept. A write that fails raises ReportError (the previous report is left)."""
        record = admit(record)
        self.records[record["cell_id"]] = record
        if time.monotonic() - self._last >= self.interval_s:
            self.write(complete=False, reason="in progress: the run has not finished (or was killed)")
        return record

    def write(self, *, complete: bool, reason: str | None = None) -> dict:
        from harness.roundtrip.environment import environment

        self._last = time.monotonic()
        try:
            return write_report(self.path, list(self.records.values()), environment=environment("cpu"),
                                complete=complete, incomplete_reason=None if complete else reason)
        except ReportError as exc:
            raise ReportError(f"{exc} (with {len(self.records)} cell(s) recorded; the report that was there "
                              "before, if any, is left as it was)") from None


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
