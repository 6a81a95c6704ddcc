"""Compare two runs: `python -m harness diff OLD.json NEW.json [--markdown]`.

Each side is a merged matrix (compat.json from `merge`) or a single per-env report; a single report is one
column. Two single reports are compared cell by cell whatever their environment names. Prints regressions
(pass -> red), fixes (red -> pass), other status changes, lost and new cells, new / removed environments, and
the new side's incomplete environments.

A cell the new run does not show is never read as green: "lost" cells (in the old run, absent from the new one,
or "missing" now in an environment that had them) and an incomplete new side (a report with `complete: false`,
or an environment of a matrix whose state is "incomplete" or "env-failed") fail the diff like a regression.
Exit status: 1 if there is a regression, a lost cell or an incomplete new side, 0 otherwise, 2 if an input cannot
be used (path and reason printed).
"""
from __future__ import annotations

import argparse
import json
import sys

from harness.reporting.changes import SINGLE, compare
from harness.reporting.merge import MATRIX_KIND, MatrixError, build_matrix, read_matrix
from harness.reporting.crosstable import KIND as CROSS_KIND
from harness.reporting.crosstable import CrossTableError, read_cross
from harness.reporting.report import ReportError, read_report
from harness.specs import statuses



def cross_as_matrix(table: dict) -> dict:
    """A cross-version table in the matrix's shape: one column per (writer, reader) pair, "writer->reader"."""
    pairs = [f"{s['writer']}->{s['reader']}" for s in table["grid"]]
    rows = [{"cell_id": row["cell_id"],
             "entries": {f"{e['writer']}->{e['reader']}": e for e in row["entries"]}} for row in table["cells"]]
    return {"environments": [{"name": name, "state": "ok"} for name in pairs], "cells": rows}


def load_side(path: str) -> dict:
    """A matrix, from either kind of file; read_report / read_matrix validate and name the file on error."""
    try:
        with open(path, encoding="utf-8") as fh:
            kind = json.load(fh).get("kind")
    except (OSError, ValueError, AttributeError):  # ValueError: not JSON, or not UTF-8
        kind = None  # let the reader below say what is wrong, with the path
    if kind == MATRIX_KIND:
        return read_matrix(path)
    if kind == CROSS_KIND:
        return cross_as_matrix(read_cross(path))
    report = read_report(path)
    matrix = build_matrix([(path, report)])
    matrix["_single"] = True
    return matrix


def _lines(title: str, items, fmt) -> list[str]:
    return [f"{title} ({len(items)}):"] + [f"  {fmt(i)}" for i in items] if items else []


def failed(result: dict) -> bool:
    """What makes the diff exit 1: a regression, a lost cell, or a new side that did not finish."""
    return bool(result["regressions"] or result["lost"] or result["incomplete"])


def _verdict_line(result: dict) -> str:
    return (f"{len(result['regressions'])} regression(s), {len(result['lost'])} lost cell(s), "
            f"{len(result['incomplete'])} incomplete environment(s) in the new run, {len(result['fixes'])} fix(es), "
            f"{len(result['changes'])} other change(s)")


def _incomplete_text(i: dict) -> str:
    what = "could not run" if i["state"] == "env-failed" else "did not finish"
    return f"{i['env']}: the new run {what}: {i['reason'][:200]}"


def text(result: dict) -> str:
    def fmt(i):
        stage = f" at {i['stage']}" if i.get("stage") else ""
        reason = f": {i['reason'][:160]}" if i.get("reason") else ""
        return f"{i['cell_id']} @ {i['env']}: {i['old']} -> {i['new']}{stage}{reason}"

    def fmt_lost(i):
        return f"{i['cell_id']}: {i['reason']}" if i["env"] is None else fmt(i)

    out = []
    out += _lines("REGRESSIONS", result["regressions"], fmt)
    out += _lines("LOST CELLS", result["lost"], fmt_lost)
    out += _lines("INCOMPLETE", result["incomplete"], _incomplete_text)
    out += _lines("fixes", result["fixes"], fmt)
    out += _lines("other status changes", result["changes"], fmt)
    out += _lines("new cells", result["new_cells"], str)
    out += _lines("new environments", result["new_envs"], str)
    out += _lines("removed environments", result["removed_envs"], str)
    if not out:
        out = ["no differences"]
    out.append(_verdict_line(result))
    return "\n".join(out) + "\n"


def markdown(result: dict) -> str:
    def row(i):
        reason = (i.get("reason") or "").replace("|", "\\|").replace("\n", " ")[:200]
        env = f"`{i['env']}`" if i["env"] else "all"
        return (f"| `{i['cell_id']}` | {env} | {i['old'] or ''} | {i['new'] or ''} | {i.get('stage') or ''} "
                f"| {reason} |")

    def cell(x):
        return (x or "").replace("|", "\\|").replace("\n", " ")[:200]

    out = ["## peft-compat: changes since the previous run", ""]
    verdict = (f"**{len(result['regressions'])} regression(s)**" if result["regressions"] else "No regression")
    out += [f"{verdict}, {len(result['fixes'])} fix(es), {len(result['changes'])} other change(s).", ""]
    if result["lost"]:
        out += [f"**{len(result['lost'])} lost cell(s)**: in the old run, not shown by the new one.", ""]
    if result["incomplete"]:
        out += ["**The new run is incomplete**: a cell it does not show is not a pass.", "",
                "| env | reason |", "| --- | --- |"]
        out += [f"| `{i['env']}` | {cell(i['reason'])} |" for i in result["incomplete"]] + [""]
    for title, key in (("Regressions (pass -> red)", "regressions"), ("Lost cells", "lost"),
                       ("Fixes (red -> pass)", "fixes"), ("Other status changes", "changes")):
        if result[key]:
            out += [f"### {title}", "", "| cell | env | old | new | stage | reason |",
                    "| --- | --- | --- | --- | --- | --- |"] + [row(i) for i in result[key]] + [""]
    for title, key in (("New cells", "new_cells"), ("New environments", "new_envs"),
                       ("Removed environments", "removed_envs")):
        if result[key]:
            out += [f"### {title}", ""] + [f"- `{x}`" for x in result[key]] + [""]
    return "\n".join(out) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", help="the earlier compat.json (matrix) or per-env report")
    parser.add_argument("new", help="the later compat.json (matrix) or per-env report")
    parser.add_argument("--markdown", action="store_true", help="Markdown for a job summary")
    parser.add_argument("--json", dest="as_json", action="store_true", help="the diff as JSON")
    parser.epilog = ("exit status: 1 on a regression, a lost cell or an incomplete new run (a missing cell is "
                     "never green), 0 otherwise, 2 if an input cannot be used")


def run(args) -> int:
    result = compare(load_side(args.old), load_side(args.new))
    if args.as_json:
        print(json.dumps(result, indent=1))
    else:
        sys.stdout.write(markdown(result) if args.markdown else text(result))
    return 1 if failed(result) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness diff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return main_args(parser.parse_args(argv))


def main_args(args) -> int:
    try:
        return run(args)
    except (ReportError, MatrixError, CrossTableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
