"""Reports: cell records -> one JSON document per environment, validated against a versioned schema and
written atomically (write to a temporary file in the same directory, fsync, rename)."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
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


def version_tuple(text) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+)\.(\d+)", text) if isinstance(text, str) else None
    return (int(match[1]), int(match[2])) if match else None


def open_schema(schema):
    """A copy of `schema` in which no object is closed (`additionalProperties: false` removed): what a document
    of a newer minor version, which may add optional fields, is read with."""
    if isinstance(schema, dict):
        return {k: open_schema(v) for k, v in schema.items() if not (k == "additionalProperties" and v is False)}
    if isinstance(schema, list):
        return [open_schema(v) for v in schema]
    return schema


def schema_for(document: dict, schema: dict, ours: str, what: str, source: str, error=ValueError) -> dict:
    """The schema to validate `document` with. schema_version is semver: the same major with a newer minor
    may add optional fields, and is read with unknown fields allowed (everything we know is still checked);
    another major raises `error`. A missing or malformed version is left to the schema to report."""
    theirs, mine = version_tuple(document.get("schema_version")), version_tuple(ours)
    if theirs is None:
        return schema
    if theirs[0] != mine[0]:
        raise error(f"{source}: written with {what} schema {document['schema_version']}; this harness reads "
                    f"{mine[0]}.x (another major version removes or retypes fields)")
    return open_schema(schema) if theirs[1] > mine[1] else schema


def _first_error(validator, document):
    return next(iter(sorted(validator.iter_errors(document), key=lambda e: len(list(e.absolute_path)))), None)


def validate_report(report: dict, source: str = "<report>") -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema_for(report, report_schema(), SCHEMA_VERSION, "report",
                                                           source, ReportError))
    error = _first_error(validator, report)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ReportError(f"{source}: does not match the report schema {SCHEMA_VERSION} at {where}: {error.message}")


@lru_cache(maxsize=1)
def _cell_validator():
    import jsonschema

    schema = report_schema()
    return jsonschema.Draft202012Validator({**schema["$defs"]["cell"], "$defs": schema["$defs"]})


def cell_errors(cell) -> list:
    """The schema errors of one record as a report stores it (non-finite numbers already null), outermost
    first; [] when the record is valid."""
    return sorted(_cell_validator().iter_errors(_json_safe(cell)), key=lambda e: (len(list(e.absolute_path)),
                                                                                  str(list(e.absolute_path))))


def describe_error(error) -> str:
    return f"at {'/'.join(str(p) for p in error.absolute_path) or '(top level)'}: {error.message}"


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
    """Validate, then write atomically. A document the schema rejects, or a write that fails (a full disk, a
    folder that cannot be written), raises ReportError naming the path; the file there before is left as it was."""
    report = build_report(cells, **kwargs)
    validate_report(report, path)
    try:
        write_json_atomic(path, report)
    except OSError as exc:
        raise ReportError(f"{path}: cannot write the report: {exc.strerror or exc}") from None
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
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not JSON (not valid UTF-8 at byte {exc.start})") from None


def read_report(path: str) -> dict:
    report = read_json(path, ReportError)
    if not isinstance(report, dict):
        raise ReportError(f"{path}: not a peft-compat report (top level is not an object)")
    validate_report(report, path)
    return report
