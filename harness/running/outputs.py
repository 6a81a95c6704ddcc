"""Where a run writes (the report, --keep-failed, the table), checked before the first cell runs: a path that
cannot be written is one line naming it, not a traceback after the cells have run.

A check may create a missing folder (the run would create it anyway) and writes and removes a probe file in it,
so a read-only or unreachable location is found up front. A disk that fills up during the run cannot be
foreseen: the report writer (harness.reporting.report.write_report) turns that into a ReportError and leaves the
report that was there before.
"""
from __future__ import annotations

import os
import tempfile


class OutputError(ValueError):
    """An output location that cannot be written (printed as `error: ...`, exit 2)."""


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def folder_problem(folder: str) -> str | None:
    """Why files cannot be written in `folder` (created when missing), or None when they can."""
    folder = os.path.abspath(folder)
    if os.path.lexists(folder):
        if not os.path.isdir(folder):
            return f"{folder} is a file, not a folder"
    else:
        existing = _nearest_existing(folder)
        if not os.path.isdir(existing):
            return f"cannot create the folder {folder}: {existing} is a file, not a folder"
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            return f"cannot create the folder {folder}: {exc.strerror or exc}"
    try:
        fd, probe = tempfile.mkstemp(prefix=".peft-compat-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write in {folder}: {exc.strerror or exc}"
    return None


def check_output_file(path: str, option: str) -> None:
    """Raise OutputError unless `path` can be (re)written atomically as a regular file."""
    if os.path.isdir(path):
        raise OutputError(f"{option} {path}: is a folder; give the file to write, "
                          f"e.g. {os.path.join(path, 'local.json')}")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise OutputError(f"{option} {path}: exists and is not a regular file")
    problem = folder_problem(os.path.dirname(os.path.abspath(path)))
    if problem:
        raise OutputError(f"{option} {path}: {problem}")


def check_output_folder(path: str, option: str) -> None:
    """Raise OutputError unless files can be written in the folder `path` (created when missing)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{option} {path}: exists and is not a folder")
    problem = folder_problem(path)
    if problem:
        raise OutputError(f"{option} {path}: {problem}")


def same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)
