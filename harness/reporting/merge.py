"""Merge per-environment reports into one matrix: rows = cells, columns = environments.

    python -m harness merge reports/                       # every reports/*.json that is a per-env report
    python -m harness merge --expect-from-tox reports/     # plus a column for every tox env without a report
    python -m harness merge --stub ENV --reason "..."      # record an env that could not be set up

Writes reports/compat.json (harness/reporting/schemas/matrix.schema.json), compat.md and compat.html next to it.
Every input is read with report.read_report: a non-JSON or schema-failing file stops the merge with its path
and the reason. An environment that could not install has a *stub* report (no cells, complete=false,
incomplete_reason "setup-failed: ..."); its column shows "env-failed" in every row, never silently dropped.
No report at all is an error (exit 2): an empty table is not a green one. `--strict` exits 1 on any red entry
(including "env-failed" and "missing"), an environment that failed, or one whose report is incomplete.

"Since when": for every cell the outcome (pass / fail / not-applicable) is laid along the peft versions and
along the transformers versions; when one package's version alone explains the outcome, the change points
are given as "last version with the old outcome -> first version with the new one".
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from functools import lru_cache
from importlib import resources

from packaging.version import InvalidVersion, Version

from harness.reporting.crosstable import KIND as CROSS_KIND
from harness.reporting.crosstable import CrossTableError
from harness.reporting.crosstable import bad_entries as cross_bad_entries
from harness.reporting.report import (ReportError, read_json, read_report, schema_for, validate_report,
                                      write_json_atomic)
from harness.reporting.since_when import since_analysis
from harness.specs import statuses
from harness.specs.known_issues import classify, release, unclassify

MATRIX_SCHEMA_VERSION = "1.1"  # 1.1: entry tolerance / keys / warnings, known issues' bisected edges
MATRIX_KIND = "peft-compat-matrix"
STUB_PREFIX = "setup-failed: "
CROSS_DIR = "cross"  # reports/cross/<reader>.json: the read reports of the cross-version phase
ENV_NAME_RE = re.compile(r"^peft(?P<peft>\d+)-tf(?P<tf>\d+)$")
ENV_PACKAGES = ("peft", "transformers", "torch", "python", "safetensors", "accelerate")
DETAIL_CAP = 50  # keys kept per entry


class MatrixError(ValueError):
    """A merged matrix file that cannot be used; str() names the file and the reason."""


@lru_cache(maxsize=1)
def matrix_schema() -> dict:
    return json.loads(resources.files("harness.reporting").joinpath("schemas/matrix.schema.json").read_text())


def validate_matrix(matrix: dict, source: str = "<matrix>") -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema_for(matrix, matrix_schema(), MATRIX_SCHEMA_VERSION, "matrix",
                                                           source, MatrixError))
    error = next(iter(sorted(validator.iter_errors(matrix), key=lambda e: len(list(e.absolute_path)))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise MatrixError(f"{source}: does not match the matrix schema {MATRIX_SCHEMA_VERSION} at {where}: "
                          f"{error.message}")


def read_matrix(path: str) -> dict:
    matrix = read_json(path, MatrixError)
    if not isinstance(matrix, dict) or matrix.get("kind") != MATRIX_KIND:
        raise MatrixError(f"{path}: not a peft-compat matrix (kind is not {MATRIX_KIND!r})")
    validate_matrix(matrix, path)
    return matrix


# --- environment names and versions ------------------------------------------------------------------------

def versions_from_env_name(name: str) -> dict:
    """Fallback for an env without a report: peft021-tf457 -> {peft: 0.21, transformers: 4.57} (approximate)."""
    match = ENV_NAME_RE.match(name or "")
    if not match:
        return {}
    peft, tf = match["peft"], match["tf"]
    return {"peft": f"{peft[0]}.{int(peft[1:])}" if len(peft) > 1 else peft,
            "transformers": f"{tf[0]}.{int(tf[1:])}" if len(tf) > 1 else tf}


def _env_sort_key(env: dict):
    v = env["versions"]
    big = Version("9999")
    return (release(v.get("peft")) or big, release(v.get("transformers")) or big, env["name"])


def env_name_of(report: dict, path: str) -> str:
    """The report's tox env; a file named <env>-<suffix>.json (e.g. the GPU job's <env>-cuda.json) is its own
    column."""
    base = os.path.splitext(os.path.basename(path))[0]
    name = (report.get("environment") or {}).get("tox_env")
    if name and base.startswith(name + "-"):
        return base
    return name or base


# --- stubs: an environment that could not be set up ----------------------------------------------------------

def stub_report(env_name: str, reason: str, versions: dict | None = None) -> dict:
    """A valid per-env report with no cells that says the environment could not be set up, and why."""
    versions = dict(versions or versions_from_env_name(env_name))
    return {
        "schema_version": "1.0", "kind": "peft-compat-report",
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": False, "incomplete_reason": STUB_PREFIX + (reason or "unknown reason"),
        "environment": {"python": versions.get("python") or "unknown", "platform": "",
                        "torch": versions.get("torch"), "transformers": versions.get("transformers"),
                        "peft": versions.get("peft"), "safetensors": None, "accelerate": None,
                        "device_name": "n/a", "tox_env": env_name},
        "summary": {}, "cells": [],
    }


def write_stub(path: str, env_name: str, reason: str, versions: dict | None = None) -> dict:
    report = stub_report(env_name, reason, versions)
    validate_report(report, path)
    write_json_atomic(path, report)
    return report


# --- re-classifying against the current known-issues table ----------------------------------------------------

def reclassify(report: dict, issues) -> dict:
    """Re-apply a known-issues table to a report's observed verdicts, in place, with the versions each record
    says it ran with: a changed table is checked against a finished matrix without running it again. The
    classifier is the one the runs use (harness.specs.known_issues.classify)."""
    for cell in report["cells"]:
        if not cell.get("environment"):
            cell["environment"] = report["environment"]
        classify(unclassify(cell), issues)
    report["summary"] = dict(Counter(c["status"] for c in report["cells"]))
    return report


# --- reading inputs ------------------------------------------------------------------------------------------

def report_paths(inputs, out: str | None = None) -> list[str]:
    """Expand directories into their *.json files; the output file and any merged matrix are skipped."""
    paths = []
    skip = os.path.abspath(out) if out else None
    for item in inputs:
        if os.path.isdir(item):  # its reports, and the read reports of the cross-version phase in <dir>/cross/
            found = glob.glob(os.path.join(item, "*.json")) + glob.glob(os.path.join(item, CROSS_DIR, "*.json"))
            for path in sorted(found):
                if os.path.abspath(path) == skip or _looks_like_matrix(path):
                    continue
                paths.append(path)
        else:
            paths.append(item)
    return paths


def _looks_like_matrix(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:  # read_report names a file that is not UTF-8
            head = fh.read(4096)
    except OSError:
        return False
    return any(f'"kind": "{kind}"' in head or f'"kind":"{kind}"' in head for kind in (MATRIX_KIND, CROSS_KIND))


def tox_env_names(toxinidir: str = ".") -> list[str]:
    """The matrix envs of tox.ini, as `tox -l` lists them (helper envs such as clean/merge left out)."""
    tox = [sys.executable, "-m", "tox"]
    out = subprocess.run([*tox, "-l", "--root", toxinidir], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if ENV_NAME_RE.match(line.strip())]


# --- the matrix ----------------------------------------------------------------------------------------------

def short_reason(cell: dict) -> str | None:
    status = cell["status"]
    if status == "pass":
        return None
    if status == "expected-failure" and cell.get("known_issue"):
        return f"known: {cell['known_issue']['reference']}"
    message = (cell.get("message") or "").strip().splitlines()
    text = message[0] if message else ""
    exc = (cell.get("exception_type") or "").rsplit(".", 1)[-1]
    if exc and exc != "CheckFailed":
        text = f"{exc}: {text}" if text else exc
    return text[:200] or None


def _entry(cell: dict) -> dict:
    return {"status": cell["status"], "stage": cell.get("stage"), "max_abs_diff": cell.get("max_abs_diff"),
            "reason": short_reason(cell), "exception_type": cell.get("exception_type"),
            "message": (cell.get("message") or None) and cell["message"][:1000],
            "observed_status": cell.get("observed_status"),
            "known_issue": (cell.get("known_issue") or {}).get("reference"),
            # for the page's detail panel (capped: a table, not the report)
            "tolerance": cell.get("tolerance"),
            "missing_keys": None if cell.get("missing_keys") is None else cell["missing_keys"][:DETAIL_CAP],
            "unexpected_keys": None if cell.get("unexpected_keys") is None else cell["unexpected_keys"][:DETAIL_CAP],
            "warnings": [f"{w.get('category') or 'Warning'}: {w.get('message') or ''}"[:300]
                         for w in (cell.get("warnings") or [])[:10]]}


def cross_path(out: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(out)), "cross.json")


def build_matrix(reports: list[tuple[str, dict]], expected_envs=(), known_issues=None, usage_reports=None) -> dict:
    """reports: [(path, report)] as read by read_report. expected_envs: names that must have a column.
    known_issues: the parsed known-issues table, to record which envs exercise each entry (optional), in
    `usage_reports` (default: `reports`; the read reports of the cross-version phase exercise entries too)."""
    envs: dict[str, dict] = {}
    cells_by_env: dict[str, dict] = {}
    for path, report in reports:
        name = env_name_of(report, path)
        if name in envs:
            raise ReportError(f"{path}: environment {name!r} is already given by {envs[name]['report']}")
        reason = report.get("incomplete_reason")
        if reason and reason.startswith(STUB_PREFIX):
            state = "env-failed"
        elif not report["complete"]:
            state = "incomplete"
        else:
            state = "ok"
        environment = report["environment"]
        versions = {p: environment.get(p) for p in ENV_PACKAGES}
        fallback = versions_from_env_name(name)
        for package, value in fallback.items():
            versions[package] = versions.get(package) or value
        envs[name] = {"name": name, "report": path, "state": state, "reason": reason,
                      "generated_at": report["generated_at"], "versions": versions,
                      "summary": dict(Counter(c["status"] for c in report["cells"]))}
        cells_by_env[name] = {c["cell_id"]: c for c in report["cells"]}
    for name in expected_envs:
        if name not in envs:
            envs[name] = {"name": name, "report": None, "state": "env-failed",
                          "reason": "no report: the environment did not install or did not run (see the tox log)",
                          "generated_at": None, "versions": versions_from_env_name(name), "summary": {}}
            cells_by_env[name] = {}
    ordered_envs = sorted(envs.values(), key=_env_sort_key)
    env_names = [e["name"] for e in ordered_envs]

    meta: dict[str, dict] = {}
    for name in env_names:
        for cid, cell in cells_by_env[name].items():
            meta.setdefault(cid, {k: cell.get(k) for k in (
                "cell_id", "case_id", "family", "adapter", "method", "apply", "save_mode", "load_mode", "device",
                "dtype")} | {"references": list(cell.get("references") or []), "tags": list(cell.get("tags") or [])})
    devices_of = {name: {c["device"] for c in cells.values()} for name, cells in cells_by_env.items()}
    rows = []
    for cid in sorted(meta):
        entries = {}
        for env in ordered_envs:
            cell = cells_by_env[env["name"]].get(cid)
            if cell is not None:
                entries[env["name"]] = _entry(cell)
            elif env["state"] == "env-failed":
                entries[env["name"]] = {"status": "env-failed", "stage": None, "max_abs_diff": None,
                                        "reason": env["reason"], "exception_type": None, "message": None,
                                        "observed_status": None, "known_issue": None}
            elif cells_by_env[env["name"]] and meta[cid]["device"] not in devices_of[env["name"]]:
                # a run of other devices only (the nightly's <env>-cuda.json): it did not select this cell
                entries[env["name"]] = {"status": "skipped", "stage": None, "max_abs_diff": None,
                                        "reason": f"this environment ran no {meta[cid]['device']} cell",
                                        "exception_type": None, "message": None, "observed_status": None,
                                        "known_issue": None}
            else:
                entries[env["name"]] = {"status": "missing", "stage": None, "max_abs_diff": None,
                                        "reason": "not in this environment's report", "exception_type": None,
                                        "message": None, "observed_status": None, "known_issue": None}
        rows.append({**meta[cid], "entries": entries})
    usage = known_issue_usage(reports if usage_reports is None else usage_reports, known_issues, env_names)
    matrix = {
        "schema_version": MATRIX_SCHEMA_VERSION, "kind": MATRIX_KIND,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environments": ordered_envs,
        "cells": rows,
        "since": since_analysis(rows, ordered_envs),
        "summary": {env["name"]: env["summary"] for env in ordered_envs},
    }
    if usage is not None:
        matrix["known_issues"] = usage
    return matrix


def _issue_key(reference, stage, versions, writer=None, reader=None, across=None, when=None) -> str:
    return json.dumps([reference, stage, versions or {}, writer, reader, across or {}, list(when or ())],
                      sort_keys=True)


def known_issue_usage(reports: list[tuple[str, dict]], issues, env_order=()) -> list[dict] | None:
    """For every entry of the known-issues table: the envs where it explained a failure (seen_in) and where
    its cell passed instead (fixed_in). An entry seen nowhere is not exercised by the matrix."""
    if issues is None:
        return None
    seen: dict[str, dict[str, set]] = {}
    for path, report in reports:
        name = env_name_of(report, path)
        for cell in report["cells"]:
            issue = cell.get("known_issue")
            if not issue or cell["status"] not in statuses.FROM_TABLE:
                continue
            key = _issue_key(issue["reference"], issue["stage"], issue.get("versions"), issue.get("writer"),
                             issue.get("reader"), issue.get("across"), issue.get("when"))
            where = f"{cell['writer']['name']}->{name}" if cell.get("writer") else name
            bucket = seen.setdefault(key, {"expected-failure": set(), "fixed": set()})
            bucket[cell["status"]].add(where)
    rank = {name: i for i, name in enumerate(env_order)}
    ordered = lambda names: sorted(names, key=lambda n: (rank.get(n, len(rank)), n))  # noqa: E731
    out = []
    for issue in issues:
        bucket = seen.get(_issue_key(issue.reference, issue.stage, issue.versions,
                                     (issue.writer or {}) if issue.cross else None,
                                     (issue.reader or {}) if issue.cross else None,
                                     issue.as_record().get("across"), issue.when), {})
        out.append({"reference": issue.reference, "stage": issue.stage, "versions": dict(issue.versions),
                    "cases": list(issue.cases), "seen_in": ordered(bucket.get("expected-failure", ())),
                    "fixed_in": ordered(bucket.get("fixed", ())), "cross": bool(issue.cross),
                    "bisected": [{"package": e.package, "kind": e.kind, "failing": e.failing, "passing": e.passing,
                                  "date": e.date, "command": e.command} for e in issue.bisected]})
    return out


# --- writing -------------------------------------------------------------------------------------------------

def merge_files(inputs, out: str, expected_envs=(), render: bool = True, known_issues_path=None,
                reclassify_cells: bool = False, previous: str | None = None) -> dict:
    """Merge the reports into the matrix at `out` (and the cross-version table beside it); the matrix."""
    return merge_all(inputs, out, expected_envs, render, known_issues_path, reclassify_cells, previous)[0]


def merge_all(inputs, out: str, expected_envs=(), render: bool = True, known_issues_path=None,
              reclassify_cells: bool = False, previous: str | None = None) -> tuple[dict, dict | None]:
    """(matrix, cross-version table or None): the own round trips' reports -> `out`; the read reports ->
    cross.json next to it. `previous`: an earlier compat.json whose regressions and fixes the page and the
    summary lead with."""
    from harness.specs.known_issues import load_known_issues

    old = read_matrix(previous) if previous else None  # a bad previous table stops here, before any write
    paths = report_paths(inputs, out)
    if not paths:  # an empty table would read as "nothing is red"
        raise ReportError(f"no per-environment report to merge in {', '.join(map(str, inputs)) or '(no input)'} "
                          f"(a folder's *.json files, merged matrices and --out left out)")
    reports = [(path, read_report(path)) for path in paths]
    issues = load_known_issues(known_issues_path)
    if reclassify_cells:
        for _, report in reports:
            reclassify(report, issues)
    own = [(path, report) for path, report in reports if report.get("phase", "roundtrip") == "roundtrip"]
    reads = [(path, report) for path, report in reports if report.get("phase") == "read"]
    cross = None
    if reads:  # the cross-version table: cross.json (+ .md) next to the matrix
        from harness.reporting.crosstable import build_cross, write_cross

        cross = build_cross(reads)
        write_cross(cross, cross_path(out))
    matrix = build_matrix(own, expected_envs, issues, usage_reports=reports)
    validate_matrix(matrix, out)
    write_json_atomic(out, matrix)
    if render:
        from harness.reporting.render import write_html, write_markdown

        base = os.path.splitext(out)[0]
        write_markdown(matrix, base + ".md", cross=cross, previous=old)
        write_html(matrix, base + ".html", cross=cross, previous=old)
    return matrix, cross


def bad_entries(matrix: dict) -> list[tuple[str, str, str]]:
    return [(row["cell_id"], env, entry["status"]) for row in matrix["cells"]
            for env, entry in row["entries"].items() if statuses.is_red(entry["status"])]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", default=["reports"],
                        help="per-env report files or folders of them (default: reports)")
    parser.add_argument("--out", default="reports/compat.json", help="matrix path; .md and .html are written "
                        "next to it (default: reports/compat.json)")
    parser.add_argument("--expect", action="append", default=[], metavar="ENV",
                        help="an environment that must have a column (no report: shown as env-failed)")
    parser.add_argument("--expect-from-tox", action="store_true",
                        help="expect every matrix env that `tox -l` lists")
    parser.add_argument("--no-render", action="store_true", help="write compat.json only")
    parser.add_argument("--known-issues", default=None, metavar="PATH",
                        help="known-issues table whose entries the matrix must exercise (default: shipped)")
    parser.add_argument("--reclassify", action="store_true",
                        help="re-apply the (current) known-issues table to the reports' observed verdicts, with "
                        "the versions each report recorded, instead of the table the runs used")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any entry is red (fail/error/fixed/crashed/timeout/env-failed/missing), an "
                        "env failed or its report is incomplete (complete: false)")
    parser.add_argument("--stub", metavar="ENV", help="instead of merging: write a stub report for ENV that "
                        "could not be set up (to --out, default reports/ENV.json) and exit")
    parser.add_argument("--reason", default="", help="why the stub's environment could not be set up")
    parser.add_argument("--previous", default=None, metavar="OLD.json", help="an earlier compat.json: the page "
                        "and the summary open with the regressions and fixes since it")


def run(args) -> int:
    if args.stub:
        out = args.out if args.out != "reports/compat.json" else os.path.join("reports", f"{args.stub}.json")
        write_stub(out, args.stub, args.reason)
        print(f"stub report for {args.stub} -> {out}")
        return 0
    expected = list(args.expect)
    if args.expect_from_tox:
        expected += tox_env_names(".")
    matrix, cross = merge_all(args.inputs, args.out, expected, render=not args.no_render,
                              known_issues_path=args.known_issues, reclassify_cells=args.reclassify,
                              previous=args.previous)
    failed_envs = [e["name"] for e in matrix["environments"] if e["state"] == "env-failed"]
    incomplete_envs = [e for e in matrix["environments"] if e["state"] == "incomplete"]
    bad = bad_entries(matrix)
    print(f"{len(matrix['cells'])} cells x {len(matrix['environments'])} environments -> {args.out}"
          + ("" if args.no_render else " (+ .md, .html)"))
    if failed_envs:
        print(f"environments that did not run: {', '.join(failed_envs)}")
    if incomplete_envs:
        print("environments with an incomplete report: "
              + ", ".join(f"{e['name']} ({e['reason'] or 'no reason given'})" for e in incomplete_envs))
    if bad:
        red = sorted({status for _, _, status in bad}, key=lambda s: statuses.RANK[s])
        print(f"{len(bad)} red entries ({'/'.join(red)})")
    if cross is not None:
        cross_bad = cross_bad_entries(cross)
        print(f"{sum(s['total'] for s in cross['grid'])} reads of {len(cross['cells'])} cells between "
              f"{len(cross['environments'])} environments -> {cross_path(args.out)} (+ .md)")
        if cross_bad:
            print(f"{len(cross_bad)} red cross-version entries (fail/error/fixed/crashed/timeout)")
        bad = bad + cross_bad
    unexercised = [k for k in matrix.get("known_issues", []) if not k["seen_in"]]
    for k in unexercised:
        scope = ("a cross-version entry: no read it applies to showed it" if k.get("cross")
                 else f"versions {k['versions'] or 'all'}")
        print(f"known issue not exercised by any environment: {k['reference']} (stage {k['stage']}, "
              f"{scope}, cases {', '.join(k['cases'])})")
    return 1 if args.strict and (bad or failed_envs or incomplete_envs) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return main_args(parser.parse_args(argv))


def main_args(args) -> int:
    try:
        return run(args)
    except (ReportError, MatrixError, CrossTableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: `tox -l` failed: {exc.stderr}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out a folder, a full disk: one line, the inputs untouched
        print(f"error: {exc.filename or args.out}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
