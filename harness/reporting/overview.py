"""What the page and the summary say first, computed from a merged matrix (and, when given, the cross-version
table and the previous run's matrix). Pure data: render.py lays it out as HTML and Markdown, charts.py draws it.

- headline findings: what fails on the newest releases (the last environment in version order that ran),
  regressions and fixes since a previous table, the known issues that have no upstream report yet
  (`reference = "unreported: ..."`), environments that did not run or did not finish;
- the numbers: entries per status over every cell x environment of the JSON (the page shows them; the browser
  test compares them with the JSON);
- pass rates per environment (release) and per family: observed passes over observed outcomes (an expected
  failure is a failure of the libraries; not-applicable, skipped, env-failed and missing entries are not
  outcomes);
- "since when" strips: every seed scenario's cells and every known issue, one square per environment, with
  the first failing and the first passing release and the edges `bisect` found;
- the heat map's rows, grouped by family and method;
- the writer x reader grid in numbers (cross_summary), when a cross-version table is merged.
"""
from __future__ import annotations

from collections import Counter
from fnmatch import fnmatchcase

from harness.specs import statuses

UNREPORTED = "unreported:"
HEADLINE_LIMIT = 40  # items listed per headline before "and N more" (the heat map has them all)


def visible_rows(matrix: dict) -> list[dict]:
    """Rows with at least one entry that is not skipped (a CPU-only matrix skips every CUDA cell), or whose
    every entry is env-failed / missing (nothing observed is never hidden)."""
    return [r for r in matrix["cells"]
            if any(e["status"] not in statuses.NOT_RUN for e in r["entries"].values())
            or all(e["status"] in statuses.MATRIX_ONLY for e in r["entries"].values())]


def observed_rows(matrix: dict) -> list[dict]:
    """The heat map's rows: a cell with an observed outcome (pass or fail) somewhere, or whose every entry is
    env-failed / missing. A cell that is only skipped (CUDA on a CPU machine) or not applicable says nothing."""
    return [r for r in matrix["cells"]
            if any(statuses.outcome(e["status"]) not in (None, "n/a") for e in r["entries"].values())
            or all(e["status"] in statuses.MATRIX_ONLY for e in r["entries"].values())]


def versions_text(env: dict) -> str:
    v = env["versions"]
    return f"peft {v.get('peft') or '?'}, transformers {v.get('transformers') or '?'}"


def newest_env(matrix: dict) -> dict | None:
    """The newest environment that ran to the end: the last in version order (merge sorts peft, then
    transformers) whose state is ok; else the last that ran at all (its report incomplete)."""
    done = [e for e in matrix["environments"] if e["state"] == "ok"]
    ran = [e for e in matrix["environments"] if e["state"] != "env-failed"]
    return (done or ran or [None])[-1]


def entry_counts(matrix: dict) -> dict:
    """Entries per status over every cell x environment of the matrix, most urgent first."""
    counts = Counter(e["status"] for row in matrix["cells"] for e in row["entries"].values())
    return dict(sorted(counts.items(), key=lambda kv: statuses.RANK[kv[0]]))


def numbers(matrix: dict) -> dict:
    counts = entry_counts(matrix)
    return {"cells": len(matrix["cells"]), "environments": len(matrix["environments"]),
            "entries": sum(counts.values()), "by_status": counts,
            "red": sum(n for s, n in counts.items() if statuses.is_red(s)),
            "failed": sum(n for s, n in counts.items() if statuses.outcome(s) == "fail"),
            "passed": sum(n for s, n in counts.items() if statuses.outcome(s) == "pass")}


def _item(row: dict, env: str, entry: dict) -> dict:
    return {"cell_id": row["cell_id"], "case_id": row["case_id"], "env": env, "status": entry["status"],
            "stage": entry.get("stage"), "reason": entry.get("reason") or "",
            "known_issue": entry.get("known_issue")}


def failing_on_newest(matrix: dict) -> dict | None:
    env = newest_env(matrix)
    if env is None:
        return None
    name = env["name"]
    items = [_item(row, name, row["entries"][name]) for row in matrix["cells"]
             if statuses.outcome(row["entries"][name]["status"]) == "fail"]
    items.sort(key=lambda i: (statuses.RANK[i["status"]], i["cell_id"]))
    ran = sum(1 for row in matrix["cells"] if statuses.outcome(row["entries"][name]["status"]) not in (None, "n/a"))
    unexpected = [i for i in items if statuses.is_red(i["status"])]
    return {"env": name, "versions": versions_text(env), "ran": ran, "items": items, "unexpected": len(unexpected),
            "known": len(items) - len(unexpected)}


def changes_since(previous: dict | None, matrix: dict) -> dict | None:
    """Regressions, fixes and lost cells since the previous table (the `diff` command's classification)."""
    if previous is None:
        return None
    from harness.reporting.changes import compare

    result = compare(previous, matrix)
    return {key: result[key] for key in ("regressions", "fixes", "lost", "changes", "new_cells", "new_envs",
                                          "removed_envs")} | {"previous_generated_at": previous.get("generated_at")}


def unreported(matrix: dict) -> list[dict]:
    return [k for k in matrix.get("known_issues") or [] if k["reference"].strip().lower().startswith(UNREPORTED)]


def env_trouble(matrix: dict) -> list[dict]:
    return [{"env": e["name"], "state": e["state"], "reason": e.get("reason") or ""}
            for e in matrix["environments"] if e["state"] != "ok"]


# --- pass rates ----------------------------------------------------------------------------------------------

def _rate(entries) -> tuple[int, int]:
    outcomes = [statuses.outcome(e["status"]) for e in entries]
    return sum(1 for o in outcomes if o == "pass"), sum(1 for o in outcomes if o not in (None, "n/a"))


def pass_rates(matrix: dict) -> dict:
    """{"envs": [{name, label, passed, observed, rate}], "families": [{family, rates: [same per env]}]}."""
    envs = matrix["environments"]
    rows = matrix["cells"]

    def per_env(selected):
        out = []
        for env in envs:
            passed, observed = _rate(r["entries"][env["name"]] for r in selected)
            out.append({"env": env["name"], "label": f"{env['versions'].get('peft') or '?'} / "
                        f"{env['versions'].get('transformers') or '?'}", "passed": passed, "observed": observed,
                        "rate": None if observed == 0 else passed / observed})
        return out

    families = sorted({r["family"] for r in rows})
    return {"envs": per_env(rows),
            "families": [{"family": f, "rates": per_env([r for r in rows if r["family"] == f])} for f in families]}


# --- since when ----------------------------------------------------------------------------------------------

def _edges_text(edges: list[dict]) -> list[dict]:
    """[{text, title}], one per distinct edge: "peft 0.11.1 -> 0.12.0 (came in)" / "... (fixed)"; the title
    has the date and the command that found it."""
    out, seen = [], set()
    for e in edges:
        if e["kind"] == "starts":
            text = f"{e['package']} {e['passing']} -> {e['failing']} (came in)"
        else:
            text = f"{e['package']} {e['failing']} -> {e['passing']} (fixed)"
        if text not in seen:
            seen.add(text)
            out.append({"text": text, "title": f"bisected {e['date']}: {e['command']}"})
    return out


def _first_changes(envs: list[dict], outcomes: list[str | None]) -> dict:
    """The first environment (in version order) where it fails, and the first after that where it passes."""
    first_fail = next((i for i, o in enumerate(outcomes) if o == "fail"), None)
    first_pass = None
    if first_fail is not None:
        first_pass = next((i for i in range(first_fail + 1, len(outcomes)) if outcomes[i] == "pass"), None)
    name = lambda i: None if i is None else {"env": envs[i]["name"], "versions": versions_text(envs[i])}  # noqa: E731
    last_pass_before = None
    if first_fail is not None:
        last_pass_before = next((i for i in range(first_fail - 1, -1, -1) if outcomes[i] == "pass"), None)
    return {"first_failing": name(first_fail), "first_passing": name(first_pass),
            "last_passing_before": name(last_pass_before)}


def issues_for_case(matrix: dict, case_id: str) -> list[dict]:
    return [k for k in matrix.get("known_issues") or [] if any(fnmatchcase(case_id, p) for p in k["cases"])]


def seed_strips(matrix: dict) -> list[dict]:
    """One strip per cell of a seed scenario (tag "seed") that ran somewhere."""
    envs = matrix["environments"]
    since = {s["cell_id"]: s["text"] for s in matrix["since"]}
    out = []
    for row in visible_rows(matrix):
        if "seed" not in (row.get("tags") or []):
            continue
        squares = [row["entries"][e["name"]]["status"] for e in envs]
        if all(s in statuses.NOT_RUN for s in squares):
            continue
        issues = issues_for_case(matrix, row["case_id"])
        refs = sorted({e.get("known_issue") for e in row["entries"].values() if e.get("known_issue")})
        out.append({"key": row["cell_id"], "title": row["cell_id"], "scenario": ", ".join(
            t for t in row.get("tags") or [] if t != "seed"), "squares": squares,
            "since": since.get(row["cell_id"], ""), "references": refs,
            "edges": _edges_text([e for k in issues for e in k.get("bisected") or []]),
            **_first_changes(envs, [statuses.outcome(s) for s in squares])})
    return out


def issue_strips(matrix: dict) -> list[dict]:
    """One strip per known issue of the own round trip: per environment, expected-failure where it explained a
    failure, fixed where its cell passed instead, else what its cells did there (pass, n/a, not run)."""
    envs = matrix["environments"]
    out = []
    for k in matrix.get("known_issues") or []:
        if k.get("cross"):
            continue
        rows = [r for r in matrix["cells"] if any(fnmatchcase(r["case_id"], p) for p in k["cases"])]
        squares = []
        for env in envs:
            if env["name"] in k["seen_in"]:
                squares.append("expected-failure")
            elif env["name"] in k["fixed_in"]:
                squares.append("fixed")
            else:
                here = [r["entries"][env["name"]]["status"] for r in rows]
                if any(statuses.outcome(s) == "pass" for s in here):
                    squares.append("pass")
                elif any(s == "not-applicable" for s in here):
                    squares.append("not-applicable")
                elif env["state"] == "env-failed":
                    squares.append("env-failed")
                else:
                    squares.append("skipped")
        outcome = [{"expected-failure": "fail", "fixed": "pass", "pass": "pass"}.get(s) for s in squares]
        versions = ", ".join(f"{p} {v}" for p, v in k["versions"].items()) or "every version"
        out.append({"key": k["reference"] + " @ " + k["stage"], "title": k["reference"], "stage": k["stage"],
                    "versions": versions, "cases": k["cases"], "squares": squares,
                    "unreported": k["reference"].strip().lower().startswith(UNREPORTED),
                    "exercised": bool(k["seen_in"] or k["fixed_in"]),
                    "edges": _edges_text(k.get("bisected") or []), **_first_changes(envs, outcome)})
    return out


def cross_issues(matrix: dict) -> list[dict]:
    return [k for k in matrix.get("known_issues") or [] if k.get("cross")]


def cross_summary(cross: dict | None, limit: int = 8) -> dict | None:
    """The writer x reader grid in a few numbers, for the overview: reads per status over the whole grid (the
    page shows them; the browser test compares them with cross.json), the red ones, the loud (an error at a
    stage) and silent (it loads, then computes other logits) failures of crosstable.findings, what the newest
    reader makes of the older environments' artifacts, and the most frequent causes of the red reads (status,
    stage, reason), each with how many pairs it touches and the pair with most of it."""
    if cross is None:
        return None
    counts = Counter()
    for square in cross["grid"]:
        counts.update(square["counts"])
    by_status = dict(sorted(counts.items(), key=lambda kv: statuses.RANK[kv[0]]))
    readers = [e["name"] for e in cross["environments"] if e.get("read")]
    newest = readers[-1] if readers else None
    from_older = [s for s in cross["grid"] if s["reader"] == newest and s["writer"] != newest]
    red_of = {(s["writer"], s["reader"]): sum(n for st, n in s["counts"].items() if statuses.is_red(st))
              for s in cross["grid"]}
    reasons: dict[tuple, Counter] = {}  # (status, stage, reason) of the red reads -> reads per pair
    for row in cross["cells"]:
        for e in row["entries"]:
            if statuses.is_red(e["status"]):
                cause = (e["status"], e["stage"], e["reason"] or "")
                reasons.setdefault(cause, Counter())[(e["writer"], e["reader"])] += 1
    top = sorted(reasons.items(), key=lambda kv: (-sum(kv[1].values()), statuses.RANK[kv[0][0]], kv[0]))[:limit]
    return {"reads": sum(counts.values()), "cells": len(cross["cells"]), "by_status": by_status,
            "red": sum(n for s, n in counts.items() if statuses.is_red(s)),
            "loud": sum(f["loud"] for f in cross["findings"]), "silent": sum(f["silent"] for f in cross["findings"]),
            "unexpected": sum(f["unexpected"] for f in cross["findings"]),
            "pairs": len(cross["grid"]), "red_pairs": sum(1 for n in red_of.values() if n),
            "newest": newest, "newest_writers": len(from_older),
            "newest_reads": sum(s["total"] for s in from_older),
            "newest_failing": sum(n for s in from_older for st, n in s["counts"].items()
                                  if statuses.outcome(st) == "fail"),
            "reasons": [{"status": st, "stage": stage, "reason": reason, "reads": sum(pairs.values()),
                         "pairs": len(pairs), "writer": pairs.most_common(1)[0][0][0],
                         "reader": pairs.most_common(1)[0][0][1]} for (st, stage, reason), pairs in top],
            "more_reasons": max(0, len(reasons) - limit)}


# --- heat map groups -----------------------------------------------------------------------------------------

def heat_groups(rows: list[dict]) -> list[dict]:
    """[{family, method, rows}] in family, method, cell order."""
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row["family"], row.get("method") or row["adapter"]), []).append(row)
    return [{"family": f, "method": m, "rows": sorted(rs, key=lambda r: r["cell_id"])}
            for (f, m), rs in sorted(groups.items())]
