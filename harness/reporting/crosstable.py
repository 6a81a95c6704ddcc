"""The cross-version table: per cell, writer env x reader env, from the read reports (phase "read").

    python -m harness merge reports/        # reports/cross/*.json -> reports/cross.{json,md}

cross.json (schema harness/reporting/schemas/cross.schema.json) has the environments in version order, a
grid with one square per (writer, reader) holding the count of each status, one row per cell with an entry
per (writer, reader), and the findings: per (writer, reader) pair with a red entry, whether a newer release
reads an older one (backward) or the other way round (forward), and how many reads fail loudly (an error at
a stage) or silently (it loads, but computes something else).
"""
from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from functools import lru_cache
from importlib import resources

from harness.reporting.report import ReportError, read_json, write_json_atomic, write_text_atomic
from harness.specs import statuses
from harness.specs.known_issues import release

KIND = "peft-compat-cross-matrix"
SCHEMA_VERSION = "1.0"
ENV_PACKAGES = ("peft", "transformers", "torch", "python")


class CrossTableError(ValueError):
    """A cross-version table that cannot be used; str() names the file and the reason."""


@lru_cache(maxsize=1)
def cross_schema() -> dict:
    return json.loads(resources.files("harness.reporting").joinpath("schemas/cross.schema.json").read_text())


def validate_cross(table: dict, source: str = "<cross table>") -> None:
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(cross_schema()).iter_errors(table))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise CrossTableError(f"{source}: does not match the cross-version schema {SCHEMA_VERSION} at {where}: "
                              f"{error.message}")


def read_cross(path: str) -> dict:
    table = read_json(path, CrossTableError)
    if not isinstance(table, dict) or table.get("kind") != KIND:
        raise CrossTableError(f"{path}: not a peft-compat cross-version table (kind is not {KIND!r})")
    validate_cross(table, path)
    return table


def reader_name(report: dict) -> str:
    import re

    return re.sub(r"-(write|read)$", "", report["environment"].get("tox_env") or "local")


def _order(envs: dict[str, dict]) -> list[str]:
    big = release("9999")
    return sorted(envs, key=lambda n: (release(envs[n].get("peft")) or big,
                                       release(envs[n].get("transformers")) or big, n))


def direction(writer: dict, reader: dict) -> str:
    """backward: a newer release reads an older one's artifact; forward: an older reads a newer; same."""
    def key(v):
        return (release(v.get("peft")), release(v.get("transformers")))
    w, r = key(writer), key(reader)
    if w == r:
        return "same"
    try:
        return "backward" if r > w else "forward"
    except TypeError:  # a version not recorded
        return "unknown"


def _reason(cell: dict) -> str | None:
    if cell["status"] == "pass":
        return None
    if cell["status"] == "expected-failure" and cell.get("known_issue"):
        carried = cell["known_issue"].get("carried_from")
        return f"known: {cell['known_issue']['reference']}" + (f" (the {carried}'s own bug)" if carried else "")
    text = ((cell.get("message") or "").strip().splitlines() or [""])[0]
    exc = (cell.get("exception_type") or "").rsplit(".", 1)[-1]
    if exc and exc not in ("CheckFailed", "BaseIncompatible"):
        text = f"{exc}: {text}" if text else exc
    return text[:200] or None


def build_cross(reports: list[tuple[str, dict]]) -> dict:
    """reports: [(path, read report)] as read by read_report."""
    envs: dict[str, dict] = {}
    readers: dict[str, str] = {}
    rows: dict[str, dict] = {}
    for path, report in reports:
        reader = reader_name(report)
        if reader in readers:
            raise ReportError(f"{path}: reader {reader!r} is already given by {readers[reader]}")
        readers[reader] = path
        envs.setdefault(reader, {p: report["environment"].get(p) for p in ENV_PACKAGES})
        for cell in report["cells"]:
            writer = cell["writer"]
            envs.setdefault(writer["name"], {p: writer.get(p) for p in ENV_PACKAGES})
            row = rows.setdefault(cell["cell_id"], {
                **{k: cell.get(k) for k in ("cell_id", "case_id", "family", "adapter", "method", "save_mode",
                                            "load_mode", "device", "dtype")}, "entries": []})
            row["entries"].append({
                "writer": writer["name"], "reader": reader, "status": cell["status"], "stage": cell.get("stage"),
                "observed_status": cell.get("observed_status"), "max_abs_diff": cell.get("max_abs_diff"),
                "exception_type": cell.get("exception_type"), "reason": _reason(cell),
                "message": (cell.get("message") or None) and cell["message"][:1000],
                "known_issue": (cell.get("known_issue") or {}).get("reference"),
                "writer_status": (writer.get("verdict") or {}).get("status"),
                "dropped_config_fields": cell.get("dropped_config_fields"),
                "warnings": len(cell.get("warnings") or [])})
    order = _order(envs)
    rank = {n: i for i, n in enumerate(order)}
    grid: dict[tuple, Counter] = {}
    for row in rows.values():
        row["entries"].sort(key=lambda e: (rank[e["writer"]], rank[e["reader"]]))
        for e in row["entries"]:
            grid.setdefault((e["writer"], e["reader"]), Counter())[e["status"]] += 1
    squares = []
    for (writer, reader), counts in sorted(grid.items(), key=lambda kv: (rank[kv[0][0]], rank[kv[0][1]])):
        squares.append({"writer": writer, "reader": reader, "direction": direction(envs[writer], envs[reader]),
                        "total": sum(counts.values()),
                        "counts": dict(sorted(counts.items(), key=lambda kv: statuses.RANK[kv[0]]))})
    table = {
        "schema_version": SCHEMA_VERSION, "kind": KIND,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environments": [{"name": n, "versions": envs[n], "read": n in readers, "report": readers.get(n)}
                         for n in order],
        "grid": squares,
        "cells": [rows[k] for k in sorted(rows)],
    }
    table["findings"] = findings(table)
    return table


def findings(table: dict) -> list[dict]:
    """Per (writer, reader) pair with an entry that is not green: loud (error, crashed, timeout) and silent
    (fail: it loaded, the logits differ) reads, expected ones, base-incompatible ones, with example cells."""
    envs = {e["name"]: e["versions"] for e in table["environments"]}
    by_pair: dict[tuple, dict] = {}
    for row in table["cells"]:
        for e in row["entries"]:
            observed = e["observed_status"] or e["status"]
            kind = {"fail": "silent", "error": "loud", "crashed": "loud", "timeout": "loud",
                    "base-incompatible": "base-incompatible"}.get(observed)
            if kind is None:
                continue
            item = by_pair.setdefault((e["writer"], e["reader"]), {
                "writer": e["writer"], "reader": e["reader"], "direction": direction(envs[e["writer"]], envs[e["reader"]]),
                "loud": 0, "silent": 0, "base-incompatible": 0, "expected": 0, "unexpected": 0, "examples": []})
            item[kind] += 1
            if kind != "base-incompatible":  # not the adapter's doing: neither expected nor unexpected
                item["expected" if e["status"] == "expected-failure" else "unexpected"] += 1
            if len(item["examples"]) < 5:
                item["examples"].append({"cell_id": row["cell_id"], "status": e["status"], "stage": e["stage"],
                                         "reason": e["reason"]})
    rank = {e["name"]: i for i, e in enumerate(table["environments"])}
    return sorted(by_pair.values(), key=lambda f: (rank[f["writer"]], rank[f["reader"]]))


def _square_text(square: dict) -> str:
    c = square["counts"]
    parts = [f"{statuses.BY_NAME[s].symbol}{n}" for s, n in c.items() if s not in ("skipped",)]
    return " ".join(parts) or "–"


def markdown(table: dict) -> str:
    names = [e["name"] for e in table["environments"]]
    squares = {(s["writer"], s["reader"]): s for s in table["grid"]}
    out = ["# peft-compat: across versions (writer x reader)", "",
           f"{sum(s['total'] for s in table['grid'])} reads of {len(table['cells'])} cells between "
           f"{len(names)} environments, generated {table['generated_at']}. Rows: the environment that saved; "
           "columns: the one that loaded.", ""]
    out += ["| writer \\ reader | " + " | ".join(f"`{n}`" for n in names) + " |",
            "| --- |" + " --- |" * len(names)]
    for w in names:
        out.append(f"| `{w}` | " + " | ".join(_square_text(squares[(w, r)]) if (w, r) in squares else ""
                                              for r in names) + " |")
    out += ["", "Legend: " + ", ".join(f"{s.symbol} {s.short}" for s in statuses.BY_NAME.values()
                                      if s.scope in ("cell", "cross")), ""]
    out += ["## Findings", ""]
    if not table["findings"]:
        out.append("Every read reproduced its writer's logits.")
    else:
        out += ["| writer | reader | direction | loud | silent | base-incompatible | expected | examples |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for f in table["findings"]:
            ex = "; ".join(f"`{x['cell_id']}` {x['status']}" + (f" at {x['stage']}" if x["stage"] else "")
                           + (f": {x['reason'][:80]}" if x["reason"] else "") for x in f["examples"][:3])
            out.append(f"| `{f['writer']}` | `{f['reader']}` | {f['direction']} | {f['loud']} | {f['silent']} | "
                       f"{f['base-incompatible']} | {f['expected']} | {ex.replace('|', '/')} |")
    return "\n".join(out) + "\n"


def bad_entries(table: dict) -> list[tuple[str, str, str, str]]:
    return [(row["cell_id"], e["writer"], e["reader"], e["status"]) for row in table["cells"]
            for e in row["entries"] if statuses.is_red(e["status"])]


def write_cross(table: dict, path: str) -> None:
    validate_cross(table, path)
    write_json_atomic(path, table)
    write_text_atomic(path[: -len(".json")] + ".md" if path.endswith(".json") else path + ".md", markdown(table))
