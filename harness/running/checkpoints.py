"""Reports that survive an interrupted run: SIGTERM handled like Ctrl-C, periodic atomic checkpoints, resume.

While a run goes on, the report at --out is rewritten atomically (temporary file + rename, see report.py) at
most every CHECKPOINT_INTERVAL_S seconds with the cells finished so far and `complete: false`; the final write
says `complete: true` only if every selected cell was recorded. So Ctrl-C, a CI timeout's SIGTERM, even a
SIGKILL of the runner leave a valid JSON report, never a truncated file. `--resume` reads that report back,
keeps its cells and runs only the missing ones; records are keyed by cell_id, so no cell is ever duplicated.

One report, one writer: a run holds an exclusive lock on `<report>.lock` (ReportLock) from before it reads the
report (--resume) until its last write; a second run on the same report is refused at once (ReportLocked: exit
2, one line naming the lock and the run that holds it), so two runs never overwrite each other's cells.
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import signal
import sys
import time
from contextlib import contextmanager

from harness.reporting.report import ReportError, read_report, write_report

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
    old = report.get("environment", {})
    changed = [f"{k} {old.get(k)} -> {environment.get(k)}" for k in RESUME_VERSION_KEYS
               if old.get(k) != environment.get(k)]
    if changed:
        raise ReportError(f"{path}: cannot resume: the report was written with other versions ({'; '.join(changed)});"
                          f" run without --resume to replace it")
    return {cell["cell_id"]: cell for cell in report["cells"]}


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
