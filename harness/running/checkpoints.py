"""Reports that survive an interrupted run: SIGTERM handled like Ctrl-C, periodic atomic checkpoints, resume.

While a run goes on, the report at --out is rewritten atomically (temporary file + rename, see report.py) at
most every CHECKPOINT_INTERVAL_S seconds with the cells finished so far and `complete: false`; the final write
says `complete: true` only if every selected cell was recorded. So Ctrl-C, a CI timeout's SIGTERM, even a
SIGKILL of the runner leave a valid JSON report, never a truncated file. `--resume` reads that report back,
keeps its cells and runs only the missing ones (and those the harness could not start); records are keyed by
cell_id, so no cell is ever duplicated. The first SIGINT / SIGTERM stops a run; later ones are ignored until
its final write is done (StopSignals).

One report, one writer: a run holds an exclusive lock on `<report>.lock` (ReportLock) from before it reads the
report (--resume) until its last write; a second run on the same report is refused at once (ReportLocked: exit
2, one line naming the lock and the run that holds it), so two runs never overwrite each other's cells.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import signal
import sys
import time
from collections import Counter

from harness.reporting.report import (SCHEMA_VERSION, ReportError, _json_safe, build_report, cell_errors,
                                      describe_error, read_report, record_key, validate_report, version_tuple,
                                      write_json_atomic, write_report, write_text_atomic)

CHECKPOINT_INTERVAL_S = 2.0
RESUME_VERSION_KEYS = ("python", "torch", "transformers", "peft", "safetensors", "accelerate")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be: the same clean shutdown path."""


class StopSignals:
    """SIGINT and SIGTERM for a run that writes a report (`harness run`, the pytest controller).

    The first of them raises KeyboardInterrupt (SIGINT) or Terminated (SIGTERM) where the run is, so that it
    stops as after Ctrl-C. From then on, and from `defer()` on (the final write of a run that was not
    interrupted), every further SIGINT / SIGTERM is only noted: a second Ctrl-C, or a CI runner that sends
    SIGINT and then SIGTERM, can no longer break the shutdown or the final write of the report, nor print a
    traceback. The shutdown is bounded: a worker in a cell is killed, not waited for (pytest-xdist gives its
    workers 10 s); SIGKILL is the way to stop a run at once, and leaves the last checkpoint, a valid report."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: list[int] = []
        self.stopping = False
        self._previous: dict = {}

    def install(self) -> "StopSignals":
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self.uninstall(force=True)
        return self

    def _handle(self, signum, frame):
        self.received.append(signum)
        if self.stopping:
            return  # already stopping: finish the shutdown and the report
        self.stopping = True
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def defer(self) -> None:
        """From here on no signal interrupts: the final write, the summary."""
        self.stopping = True

    def uninstall(self, force: bool = False) -> None:
        """Give the signals back to what handled them before. Not after a signal came, unless forced: then the
        process is on its way out, and one more Ctrl-C while it exits (interpreter shutdown, which resets
        Python-level handlers to the default action) must neither print a traceback nor kill it with the wrong
        exit status, so SIGINT and SIGTERM are ignored from here on."""
        if self.received and not force:
            for sig in self._previous:
                signal.signal(sig, signal.SIG_IGN)
        else:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()


def interrupt_reason(exc: BaseException) -> tuple[str, int]:
    """(incomplete_reason, exit code) for an interrupt."""
    return signal_reason(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def signal_reason(signum: int) -> tuple[str, int]:
    if signum == signal.SIGTERM:
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

    def __init__(self, path: str, previous: dict | None = None, interval_s: float = CHECKPOINT_INTERVAL_S,
                 phase: str = "roundtrip"):
        self.path, self.interval_s, self.phase = path, interval_s, phase
        self.records: dict[str, dict] = dict(previous or {})
        self._last = -float("inf")
        self._checked = False  # every record validated by a whole-report write (see _checkpoint)
        self._texts: dict[str, tuple] = {}  # key -> (record, its JSON text) for checkpoints

    def add(self, record: dict) -> dict:
        """Keep `record` (admitted: see `admit`) and rewrite the report if the last write is old enough.
        Returns the record as kept. A write that fails raises ReportError (the previous report is left)."""
        record = admit(record)
        self.records[record_key(record)] = record
        if time.monotonic() - self._last >= self.interval_s:
            self.write(complete=False, reason="in progress: the run has not finished (or was killed)")
        return record

    def write(self, *, complete: bool, reason: str | None = None) -> dict:
        from harness.roundtrip.environment import environment

        self._last = time.monotonic()
        kwargs = dict(environment=environment("cpu"), complete=complete,
                      incomplete_reason=None if complete else reason, phase=self.phase)
        try:
            if not self._checked:  # the first write (with the records of a resumed report): validated whole
                report = write_report(self.path, list(self.records.values()), **kwargs)
                self._checked = True
                return report
            if complete:
                return self._final(kwargs)
            return self._checkpoint(kwargs)
        except ReportError as exc:
            raise ReportError(f"{exc} (with {len(self.records)} cell(s) recorded; the report that was there "
                              "before, if any, is left as it was)") from None


    def _final(self, kwargs: dict) -> dict:
        """The final report, as write_report writes it (indented), after a first write: every record in it was
        validated when it came in (admit) or by the first write, so the schema checks the rest of the document;
        validating ~650 records again cost the end of every run about a second."""
        report = build_report(list(self.records.values()), **kwargs)
        validate_report({**report, "cells": []}, self.path)
        try:
            write_json_atomic(self.path, report)
        except OSError as exc:
            raise ReportError(f"{self.path}: cannot write the report: {exc.strerror or exc}") from None
        return report

    def _checkpoint(self, kwargs: dict) -> dict:
        """An in-progress write after the first. Every record added since was admitted (validated against the
        cell schema) when it came in, and the earlier ones were validated by the first write, so only the rest
        of the document is validated here; each record is serialised once (compact JSON) and the document is
        joined from those texts. Validating and serialising every cell again at every write cost a run time
        proportional to cells x writes. The file parses to the document build_report makes of the records."""
        envelope = build_report([], **kwargs)
        envelope["summary"] = dict(Counter(r["status"] for r in self.records.values()))
        validate_report(envelope, self.path)
        for key, record in self.records.items():
            if self._texts.get(key, (None,))[0] is not record:
                self._texts[key] = (record, json.dumps(_json_safe(record)))
        del envelope["cells"]
        head = json.dumps(envelope)
        text = (head[:-1] + ', "cells": [\n' + ",\n".join(self._texts[k][1] for k in sorted(self.records))
                + "\n]}\n")
        try:
            write_text_atomic(self.path, text)
        except OSError as exc:
            raise ReportError(f"{self.path}: cannot write the report: {exc.strerror or exc}") from None
        return envelope


def resume_records(path: str, environment: dict) -> dict[str, dict]:
    """The cells of an earlier (possibly interrupted) report at `path`, to be kept by a resumed run; a record
    that says its cell never ran (the harness could not start it: isolation.never_started) is not kept, so
    the cell runs again. A missing file resumes nothing; a file that is not a valid report, or was written with
    other versions, raises ReportError naming the path and the reason."""
    from harness.running.isolation import never_started

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
    return {record_key(cell): cell for cell in report["cells"] if not never_started(cell)}


class ReportLocked(ReportError):
    """Another run holds the report's lock; str() names the lock file and the run that holds it."""


class ReportLock:
    """An exclusive lock on `<report>.lock` (fcntl.flock), held by a run for as long as it writes the report.

    flock belongs to the open file, so the kernel drops it when the holder dies, even by SIGKILL: a lock is never
    stale. The holder writes its pid and command line into the file for the message a refused run prints. The
    file is removed on release; a run that locked a file someone removed meanwhile tries again, so two runs
    never hold two different files of the same name. Forked cell processes close their copy of the descriptor
    (harness.running.isolation), so a cell process left behind cannot keep the report locked."""

    def __init__(self, report_path: str):
        self.report_path = str(report_path)
        self.path = self.report_path + ".lock"
        self.fd: int | None = None

    def acquire(self) -> "ReportLock":
        import fcntl

        from harness.running.isolation import close_in_children

        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise ReportError(f"{self.path}: cannot lock the report: {exc.strerror}") from None
                raise ReportLocked(
                    f"{self.report_path}: another run is writing this report (it holds the lock {self.path}"
                    f"{': ' + holder if holder else ''}); wait for it to finish, or give this run another "
                    f"report path") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder before us removed the file after we opened it: lock the new one
        holder = (f"pid {os.getpid()}, since {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}: "
                  f"{' '.join(sys.argv)[:300]}")
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode("utf-8", "replace"))
        self.fd = fd
        close_in_children(fd)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        from harness.running.isolation import forget_in_children

        try:
            os.unlink(self.path)  # while still holding it: a run that opened this file meanwhile locks a dead
            # file, sees that it is not the one at the path any more, and tries again
        except OSError:
            pass
        forget_in_children(self.fd)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "ReportLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 400, 0).decode("utf-8", "replace").strip().replace("\n", " ")
    except OSError:
        return ""
