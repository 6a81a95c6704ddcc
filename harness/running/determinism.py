"""Determinism: rerun the matrix N times and report every cell whose verdict or max diff changed.

`python -m harness rerun -n 20` runs the selected cells N times. Each repetition starts from nothing that an
earlier one made: a new CellRunner (a fresh forked worker, an empty base-checkpoint cache, so the bases are
rebuilt), or with --processes a new interpreter (`python -m harness run`) with its own PYTHONHASHSEED.
A cell is stable when status, stage, exception type and max_abs_diff are identical (bit for bit) in every
repetition; anything else is a flaky cell: a bug of the case or of the harness.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

from harness.running.isolation import ISOLATION_CHOICES, ISOLATION_HELP, isolate_value

FIELDS = ("status", "stage", "exception_type", "max_abs_diff")


def signature(record: dict) -> tuple:
    return tuple(record.get(f) for f in FIELDS)


def unstable_cells(runs: list[dict[str, dict]]) -> list[dict]:
    """runs: one {cell_id: record} per repetition. Returns, per cell whose signature changed (or that is
    missing from some repetitions), the distinct signatures with how often each was seen."""
    out = []
    for cid in sorted(set().union(*runs) if runs else ()):
        seen = Counter(signature(run[cid]) if cid in run else ("missing",) for run in runs)
        if len(seen) > 1:
            out.append({"cell_id": cid, "variants": [{**dict(zip(FIELDS, sig)), "count": n}
                                                     if sig != ("missing",) else {"missing": True, "count": n}
                                                     for sig, n in seen.most_common()]})
    return out


def rerun_in_process(cells, n: int, *, known_issues=None, isolation="worker", timeout_s=None, hooks=None,
                     progress=None) -> list[dict[str, dict]]:
    """Run `cells` (case, device, dtype) n times; a fresh runner and base cache for every repetition."""
    from harness.running.isolation import CellRunner
    from harness.specs.known_issues import load_known_issues

    known_issues = load_known_issues() if known_issues is None else known_issues
    runs = []
    for rep in range(n):
        runner = CellRunner(isolate=isolation, timeout_s=timeout_s, known_issues=known_issues)
        try:
            records = {}
            for case, device, dtype in cells:
                record = runner.run(case, device, dtype, **(hooks or {}))
                records[record["cell_id"]] = record
        finally:
            runner.close()
        runs.append(records)
        if progress:
            progress(rep, records)
    return runs


def rerun_in_processes(argv_tail: list[str], n: int, progress=None) -> list[dict[str, dict]]:
    """n times `python -m harness run <argv_tail>` in a new interpreter, each with another PYTHONHASHSEED."""
    from harness.reporting.report import read_report

    runs = []
    with tempfile.TemporaryDirectory(prefix="peft-compat-rerun-") as tmp:
        for rep in range(n):
            out = os.path.join(tmp, f"run-{rep}.json")
            env = dict(os.environ, PYTHONHASHSEED=str(rep + 1))
            subprocess.run([sys.executable, "-m", "harness", "run", "-q", "--out", out, *argv_tail],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            records = {c["cell_id"]: c for c in read_report(out)["cells"]}
            runs.append(records)
            if progress:
                progress(rep, records)
    return runs


def summary(runs: list[dict[str, dict]], seconds: float) -> dict:
    cells = sorted(set().union(*runs)) if runs else []
    flaky = unstable_cells(runs)
    return {"repetitions": len(runs), "cells": len(cells), "seconds": round(seconds, 1),
            "statuses": dict(Counter(r["status"] for r in (runs[0].values() if runs else ()))),
            "unstable": flaky}


def cmd_rerun(args) -> int:
    from harness.roundtrip.check import load_cases
    from harness.running.cells import selected_cells
    from harness.running.outputs import OutputError, check_output_file
    from harness.running.summary import EXIT_OK, EXIT_RED
    from harness.specs.known_issues import load_known_issues

    cells = selected_cells(load_cases(*args.cases), args.cases, args.device, args.match, full=not args.fast)
    if args.out:
        check_output_file(args.out, "--out")
    start = time.monotonic()

    def progress(rep, records):
        print(f"repetition {rep + 1}/{args.n}: {len(records)} cells, "
              + ", ".join(f"{n} {s}" for s, n in sorted(Counter(r['status'] for r in records.values()).items()))
              + f" ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)

    if args.processes:
        tail = [a for c in args.cases for a in ("--cases", c)]
        tail += [a for d in (args.device or []) for a in ("--device", d)]
        tail += [a for m in (args.match or []) for a in ("-k", m)]
        tail += ["--fast"] if args.fast else []
        tail += ["--known-issues", args.known_issues] if args.known_issues else []
        runs = rerun_in_processes(tail, args.n, progress)
    else:
        isolation = isolate_value(args.isolation)
        runs = rerun_in_process(cells, args.n, known_issues=load_known_issues(args.known_issues),
                                isolation=isolation, progress=progress)
    result = summary(runs, time.monotonic() - start)
    if args.out:
        from harness.reporting.report import write_json_atomic

        try:
            write_json_atomic(args.out, result)
        except OSError as exc:
            raise OutputError(f"--out {args.out}: cannot write the summary: {exc.strerror or exc}") from None
    print(f"{result['cells']} cells x {result['repetitions']} repetitions in {result['seconds']} s: "
          f"{len(result['unstable'])} unstable")
    for cell in result["unstable"]:
        print(f"UNSTABLE {cell['cell_id']}: " + json.dumps(cell["variants"]))
    return EXIT_RED if result["unstable"] else EXIT_OK


def add_arguments(parser) -> None:
    parser.add_argument("-n", type=int, default=20, help="repetitions (default: 20)")
    parser.add_argument("--processes", action="store_true",
                        help="a new interpreter per repetition (another PYTHONHASHSEED each; ~4 s more each)")
    parser.add_argument("--isolation", choices=ISOLATION_CHOICES, default="worker",
                        help=ISOLATION_HELP + "; for the in-process repetitions")
    parser.add_argument("--out", default=None, help="write the summary (JSON) here")
