"""Reports: cell records -> one JSON document per environment, validated against a versioned schema and
written atomically (write to a temporary file in the same directory, fsync, rename)."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from collections import Counter
from functools import lru_cache
from importlib import resources

from harness.specs import statuses

SCHEMA_VERSION = "1.1"  # 1.1: phase "read", cells with a writer, status base-incompatible


class ReportError(ValueError):
    """A report file that cannot be used; str() names the file and the reason."""


@lru_cache(maxsize=1)
def report_schema() -> dict:
    return json.loads(resources.files("harness.reporting").joinpath("schemas/report.schema.json").read_text())


def _json_safe(value):
    """NaN / inf are not JSON: write them as strings that say what they were."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def record_key(record: dict) -> str:
    """What identifies a record in a report: the cell, and for a cross-version read also its writer."""
    writer = record.get("writer")
    return f"{writer['name']}/{record['cell_id']}" if writer else record["cell_id"]


def build_report(cells: list[dict], *, environment: dict, complete: bool = True,
                 incomplete_reason: str | None = None, phase: str = "roundtrip") -> dict:
    """The report document of `cells` (records) run in `environment` (harness.roundtrip.environment);
    phase "read" for the reads of other releases' artifacts."""
    by_id: dict[str, dict] = {}
    for cell in cells:  # one record per cell: a later record of the same cell replaces an earlier one
        by_id[record_key(cell)] = cell
    ordered = [by_id[k] for k in sorted(by_id)]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "peft-compat-report",
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "phase": phase,
        "complete": complete,
        "incomplete_reason": incomplete_reason,
        "environment": environment,
        "summary": dict(Counter(c["status"] for c in ordered)),
        "cells": [_json_safe(c) for c in ordered],
    }


def validate_report(report: dict, source: str = "<report>") -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema())
    error = next(iter(sorted(validator.iter_errors(report), key=lambda e: len(list(e.absolute_path)))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ReportError(f"{source}: does not match the report schema {SCHEMA_VERSION} at {where}: {error.message}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never a part: a temporary
    file in the same folder, fsync, rename; with the mode the umask gives (mkstemp would make it 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, document: dict) -> None:
    write_text_atomic(path, json.dumps(document, indent=1, sort_keys=False) + "\n")


def write_report(path: str, cells: list[dict], **kwargs) -> dict:
    report = build_report(cells, **kwargs)
    validate_report(report, path)
    write_json_atomic(path, report)
    return report


def read_json(path: str, error=ValueError):
    """json.load of `path`; an unreadable or non-JSON file raises `error` naming the path and the reason."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def read_report(path: str) -> dict:
    report = read_json(path, ReportError)
    if not isinstance(report, dict):
        raise ReportError(f"{path}: not a peft-compat report (top level is not an object)")
    validate_report(report, path)
    return report
