"""Render a merged matrix (merge.py) as Markdown (reports/compat.md, GitHub job summaries, with the pass-rate
chart beside it as compat-passrate.svg) and as one self-contained HTML page (reports/compat.html: no external
file, no network).

The page opens on the answer, then the evidence:
1. the overview (overview.py): what fails on the newest releases, regressions and fixes since a previous
   table (`merge --previous OLD.json`), known issues without an upstream report, the writer x reader grid
   in numbers (reads per status, loud and silent failures, the most frequent causes), the entry counts, the
   pass-rate chart (charts.py, inline SVG);
2. the heat map: cells grouped by family and method x environments, one colour and one glyph per status
   (GLYPHS: the shape says it without the colour), with filters (family, method, status, environment, text);
3. "since when": a strip across releases for every seed scenario and every known issue, with the first
   failing and first passing release and the edges `bisect` found;
4. across versions: the writer x reader grid of cross.json, each square opening the reads behind it: its
   counts per status, and the reads that did not pass grouped by identical failure (cross_data);
5. the environments.
Every entry of the heat map opens a detail panel (the record's fields and the commands that reproduce it)
and has a permalink: compat.html#cell=<cell id>&at=<env>; #w=<writer>&r=<reader> opens a square of the
cross grid, #w=<writer>&r=<reader>&read=<cell id> one read in it (a passing read, which the page counts but
does not list, says that it passed). Every view state (filters included) lives in the URL fragment.

Everything the overview, the strips and the grids say is rendered here, so it reads without JavaScript; the
heat map's details are one JSON document in the page that the script reads when a square is opened, the
cross grid's another, read when one of its squares opens (25 environments x 1,008 cells plus 100,000 reads
make a 2 MB page; the real matrix with its 94,530 reads 1.15 MB; both paint before the script runs). Template, style
sheet, script and SVG template are files in assets/. Only http(s) references become links.
"""
from __future__ import annotations

import os
from collections import Counter

from harness.reporting import overview
from harness.reporting.templating import ASSETS, asset, environment, inline, is_web_url  # noqa: F401
from harness.reporting.report import write_text_atomic
from harness.specs import statuses

SYMBOLS = {s.name: s.symbol for s in statuses.BY_NAME.values()}
SHORT = {s.name: s.short for s in statuses.BY_NAME.values()}
STATUS_RANK = statuses.RANK
RED = statuses.RED
DETAIL = statuses.RED + statuses.FAILED  # entries whose stage the Markdown table names
# the heat map's shape cue: one glyph per status, from fonts every desktop has (no emoji font needed)
GLYPHS = {"fixed": "★", "crashed": "†", "timeout": "◔", "error": "!", "fail": "✗", "env-failed": "⊘",
          "missing": "?", "base-incompatible": "≠", "expected-failure": "≈", "pass": "✓", "not-applicable": "–",
          "skipped": "·"}
CHART_NAME = "passrate.svg"  # written as <table base>-passrate.svg next to compat.md


def _visible_rows(matrix: dict) -> tuple[list[dict], int]:
    rows = overview.visible_rows(matrix)
    return rows, len(matrix["cells"]) - len(rows)


def _versions(env: dict) -> str:
    v = env["versions"]
    return f"peft {v.get('peft') or '?'}, transformers {v.get('transformers') or '?'}, torch {v.get('torch') or '?'}"


def _md_cell(entry: dict) -> str:
    status = entry["status"]
    text = f"{SYMBOLS.get(status, '')} {SHORT.get(status, status)}"
    if entry.get("stage") and status in DETAIL:
        text += f" ({entry['stage']})"
    return text.strip()


def _md_escape(text) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def since_by_case(matrix: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(case_id, [(cells, text)])]: identical texts of one case's cells are grouped."""
    grouped: dict[str, dict[str, list[str]]] = {}
    for item in matrix["since"]:
        if item["text"] == "not observed in any environment":
            continue
        cell_suffix = item["cell_id"][len(item["case_id"]):]
        grouped.setdefault(item["case_id"], {}).setdefault(item["text"], []).append(cell_suffix)
    return [(case, [(", ".join(cells), text) for text, cells in texts.items()])
            for case, texts in sorted(grouped.items())]


# --- Markdown ---------------------------------------------------------------------------------------------------

def _bar(rate: float | None, width: int = 20) -> str:
    """A text bar: shows in every Markdown renderer, the GitHub job summary included."""
    if rate is None:
        return "(nothing observed)"
    full = round(rate * width)
    return "█" * full + "░" * (width - full)


def _md_item(i: dict) -> str:
    stage = f" at {i['stage']}" if i.get("stage") else ""
    known = f" (known: {i['known_issue']})" if i.get("known_issue") else ""
    reason = "" if i.get("known_issue") else (f": {_md_escape(i['reason'])[:140]}" if i.get("reason") else "")
    return f"- {SYMBOLS.get(i['status'], '')} `{i['cell_id']}` {i['status']}{stage}{known}{reason}"


def _md_strip(squares: list[str]) -> str:
    return "".join(SYMBOLS.get(s, "?") if s not in ("skipped",) else "▫️" for s in squares)


def markdown(matrix: dict, *, details: bool = True, cross: dict | None = None, previous: dict | None = None,
             chart: str | None = None) -> str:
    """compat.md. `chart`: the file name of the pass-rate SVG written next to it (an image link to it)."""
    envs = matrix["environments"]
    rows, hidden = _visible_rows(matrix)
    nums = overview.numbers(matrix)
    out = ["# peft-compat matrix", "",
           f"{len(matrix['cells'])} cells x {len(envs)} environments, generated {matrix['generated_at']}: "
           f"{nums['entries']} entries, {nums['passed']} pass, {nums['failed']} fail "
           f"({nums['red']} red).", ""]
    out += ["## Findings", ""]
    newest = overview.failing_on_newest(matrix)
    if newest is not None:
        out.append(f"**On the newest releases** (`{newest['env']}`: {newest['versions']}): {len(newest['items'])} of "
                   f"{newest['ran']} observed cells fail, {newest['unexpected']} of them unexpected (red), "
                   f"{newest['known']} known issues.")
        out += [""] + [_md_item(i) for i in newest["items"][:overview.HEADLINE_LIMIT]]
        if len(newest["items"]) > overview.HEADLINE_LIMIT:
            out.append(f"- ... and {len(newest['items']) - overview.HEADLINE_LIMIT} more (see compat.html)")
        out.append("")
    changes = overview.changes_since(previous, matrix)
    if changes is not None:
        out.append(f"**Since the previous run** ({changes['previous_generated_at']}): "
                   f"{len(changes['regressions'])} regression(s), {len(changes['fixes'])} fix(es), "
                   f"{len(changes['lost'])} lost cell(s).")
        out += [""] + [f"- regression: `{i['cell_id']}` @ `{i['env']}`: {i['old']} -> {i['new']}"
                       for i in changes["regressions"][:overview.HEADLINE_LIMIT]]
        out += [f"- fix: `{i['cell_id']}` @ `{i['env']}`: {i['old']} -> {i['new']}"
                for i in changes["fixes"][:overview.HEADLINE_LIMIT]] + [""]
    unreported = overview.unreported(matrix)
    if unreported:
        out += [f"**Known issues with no upstream report yet** ({len(unreported)}):", ""]
        out += [f"- {_md_escape(k['reference'])} (stage {k['stage']}; seen in {len(k['seen_in'])} "
                f"{'read(s)' if k.get('cross') else 'environment(s)'})"
                for k in unreported] + [""]
    trouble = overview.env_trouble(matrix)
    if trouble:
        out += [f"**Environments that did not run or did not finish** ({len(trouble)}):", ""]
    for t in trouble:
        out.append(f"- `{t['env']}`: {t['state']}: {_md_escape(t['reason'])[:200]}")
    out += ["", "## Pass rate per release", ""]
    if chart:
        out += [f"![pass rate per release and per family]({chart})", ""]
    rates = overview.pass_rates(matrix)
    out += ["| env | peft / transformers | pass rate | passed / observed |", "| --- | --- | --- | --- |"]
    for r in rates["envs"]:
        pct = "-" if r["rate"] is None else f"{100 * r['rate']:.0f}%"
        out.append(f"| `{r['env']}` | {r['label']} | `{_bar(r['rate'])}` {pct} | {r['passed']} / {r['observed']} |")
    out += ["", "Per family (% of observed outcomes that pass, per environment in the order above):", "",
            "| family | " + " | ".join(f"`{e['name']}`" for e in envs) + " |", "| --- |" + " --- |" * len(envs)]
    for fam in rates["families"]:
        out.append(f"| {fam['family']} | " + " | ".join("-" if r["rate"] is None else f"{100 * r['rate']:.0f}"
                                                        for r in fam["rates"]) + " |")
    out += ["", "## Since when", "", "One square per environment, oldest first ("
            + ", ".join(f"{SYMBOLS[s]} {SHORT[s]}" for s in statuses.BY_NAME if s != "skipped") + ", ▫️ not run).", ""]
    out += ["| seed scenario cell | across releases | first failing | first passing after | bisected |",
            "| --- | --- | --- | --- | --- |"]
    for s in overview.seed_strips(matrix):
        out.append(f"| `{s['title']}` | {_md_strip(s['squares'])} | {_strip_env(s['first_failing'])} | "
                   f"{_strip_env(s['first_passing'])} | {_md_escape('; '.join(e['text'] for e in s['edges']))} |")
    issues = overview.issue_strips(matrix)
    if issues:
        out += ["", "| known issue | stage | versions | across releases | bisected |", "| --- | --- | --- | --- | --- |"]
        for s in issues:
            out.append(f"| {_md_escape(s['title'])} | {s['stage']} | {_md_escape(s['versions'])} | "
                       f"{_md_strip(s['squares'])} | {_md_escape('; '.join(e['text'] for e in s['edges']))} |")
    out += ["", "## Environments", "", "| env | peft | transformers | torch | state | summary |",
            "| --- | --- | --- | --- | --- | --- |"]
    for env in envs:
        v = env["versions"]
        summary = ", ".join(f"{n} {s}" for s, n in sorted(env["summary"].items()))
        state = env["state"] if env["state"] == "ok" else f"**{env['state']}**: {_md_escape(env['reason'])}"
        out.append(f"| `{env['name']}` | {v.get('peft') or '?'} | {v.get('transformers') or '?'} | "
                   f"{v.get('torch') or '?'} | {state} | {summary} |")
    if cross is not None:
        out += ["", "## Across versions", "",
                f"{sum(s['total'] for s in cross['grid'])} reads (writer x reader) of {len(cross['cells'])} cells: "
                "the grid and its findings are in cross.md and in compat.html.", ""]
    out += ["", "## Matrix", "", "<details><summary>Every cell x environment "
            f"({len(rows)} cells that ran somewhere)</summary>", ""]
    if hidden:
        out += [f"{hidden} cell(s) skipped in every environment (no CUDA) are left out.", ""]
    out.append("| cell | " + " | ".join(f"`{e['name']}`" for e in envs) + " |")
    out.append("| --- |" + " --- |" * len(envs))
    for row in rows:
        out.append(f"| `{row['cell_id']}` | " + " | ".join(_md_cell(row["entries"][e["name"]]) for e in envs) + " |")
    out += ["", "Legend: " + ", ".join(f"{sym} {SHORT.get(s, s)}" for s, sym in SYMBOLS.items()), "", "</details>"]
    out += ["", "## Since when, per cell", "", "| case | cells | outcome along the versions |", "| --- | --- | --- |"]
    for case, texts in since_by_case(matrix):
        for cells, text in texts:
            out.append(f"| `{case}` | {_md_escape(cells)} | {_md_escape(text)} |")
    if matrix.get("known_issues"):
        out += ["", "## Known issues: where the matrix exercises them", "",
                "| reference | stage | versions | expected failure in | passed (fixed) in |",
                "| --- | --- | --- | --- | --- |"]
        for k in matrix["known_issues"]:
            versions = ", ".join(f"{p} {v}" for p, v in k["versions"].items()) or "all"
            seen = ", ".join(f"`{e}`" for e in k["seen_in"]) or "**none: not exercised**"
            fixed = ", ".join(f"`{e}`" for e in k["fixed_in"])
            out.append(f"| {_md_escape(k['reference'])} | {k['stage']} | {_md_escape(versions)} | {seen} | {fixed} |")
    if details:
        failing = [(row, e, row["entries"][e["name"]]) for row in rows for e in envs
                   if row["entries"][e["name"]]["status"] in RED]
        out += ["", "## Red entries", ""]
        if not failing:
            out.append("None.")
        else:
            out += ["| cell | env | status | stage | reason |", "| --- | --- | --- | --- | --- |"]
            seen_env_failed = set()
            for row, env, entry in failing:
                if entry["status"] == "env-failed":
                    if env["name"] in seen_env_failed:
                        continue
                    seen_env_failed.add(env["name"])
                    out.append(f"| (every cell) | `{env['name']}` | env-failed | | {_md_escape(entry['reason'])} |")
                    continue
                out.append(f"| `{row['cell_id']}` | `{env['name']}` | {entry['status']} | {entry['stage'] or ''} | "
                           f"{_md_escape(entry['reason'])[:200]} |")
    return "\n".join(out) + "\n"


def _strip_env(item: dict | None) -> str:
    return "" if item is None else f"`{item['env']}` ({item['versions']})"


def chart_path(md_path: str) -> str:
    return os.path.splitext(md_path)[0] + "-" + CHART_NAME


def write_markdown(matrix: dict, path: str, *, cross: dict | None = None, previous: dict | None = None) -> None:
    """compat.md and, next to it, compat-passrate.svg (the Markdown links it by its file name)."""
    from harness.reporting.charts import passrate_svg

    svg = chart_path(path)
    write_text_atomic(svg, passrate_svg(matrix))
    write_text_atomic(path, markdown(matrix, cross=cross, previous=previous, chart=os.path.basename(svg)))


# --- HTML ------------------------------------------------------------------------------------------------------
# The page is assets/matrix.html.j2 (Jinja2, autoescape on) with assets/matrix.css and assets/matrix.js inlined:
# one file that works offline. This module only prepares the values the template shows (templating.py loads).


def _trim(values: list) -> list:
    while values and values[-1] in (None, [], ""):
        values.pop()
    return values


class _Strings:
    """The page's string table: a text repeated across environments (a warning, a key, a message) is stored
    once; entries hold its index."""

    def __init__(self):
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, text):
        if text is None:
            return None
        if isinstance(text, list):
            return [self(t) for t in text]
        if text not in self._index:
            self._index[text] = len(self.items)
            self.items.append(text)
        return self._index[text]


def _page_entry(entry: dict, status_index: dict, row_tolerance, text: _Strings) -> list:
    """One entry for the page's JSON, as a short array (trailing empties dropped; texts as indices into the
    string table): [status, stage, max_abs_diff, exception_type, message, known_issue, observed_status,
    missing_keys, unexpected_keys, warnings, tolerance (only where it differs from the row's), reason]."""
    tol = entry.get("tolerance")
    observed = entry.get("observed_status")
    reason = entry.get("reason") if entry.get("reason") and not entry.get("message") \
        and entry["status"] not in statuses.MATRIX_ONLY else None  # an env's reason is in "envs"
    return _trim([status_index[entry["status"]], entry.get("stage"), entry.get("max_abs_diff"),
                  text(entry.get("exception_type")), text(entry.get("message")), text(entry.get("known_issue")),
                  observed if observed not in (None, entry["status"]) else None, text(entry.get("missing_keys")),
                  text(entry.get("unexpected_keys")), text(entry.get("warnings") or None),
                  tol if tol is not None and tol != row_tolerance else None, text(reason)])


def page_data(matrix: dict, rows: list[dict]) -> dict:
    """What the heat map's panel shows, for the script: environments, statuses, rows by cell id."""
    names = list(statuses.BY_NAME)
    index = {s: i for i, s in enumerate(names)}
    since = {s["cell_id"]: s["text"] for s in matrix["since"]}
    env_names = [e["name"] for e in matrix["environments"]]
    text = _Strings()
    data_rows = {}
    for row in rows:
        tols = Counter(e.get("tolerance") for e in row["entries"].values() if e.get("tolerance") is not None)
        tol = tols.most_common(1)[0][0] if tols else None
        data_rows[row["cell_id"]] = {
            "case": row["case_id"], "family": row["family"], "adapter": row["adapter"], "method": row.get("method"),
            "apply": row.get("apply"), "save": row.get("save_mode"), "load": row.get("load_mode"),
            "device": row["device"], "dtype": row["dtype"], "refs": row.get("references") or [],
            "since": since.get(row["cell_id"], ""), "tol": tol,
            "e": [_page_entry(row["entries"][n], index, tol, text) for n in env_names]}
    data = {"statuses": names, "glyphs": [GLYPHS[s] for s in names],
            "envs": [{"name": e["name"], "state": e["state"], "reason": e.get("reason") or "",
                      **{p: e["versions"].get(p) for p in ("peft", "transformers", "torch", "python")}}
                     for e in matrix["environments"]],
            "rows": data_rows, "strings": text.items}
    return data


def _diff(value):
    """A max abs diff as the panel prints it (3 significant digits): the page need not carry more."""
    return None if value is None else float(f"{value:.3g}")


def cross_data(cross: dict) -> dict:
    """What a square of the writer x reader grid opens, for the script (a JSON document of its own, read only
    when a square is opened). Per square ("<writer>|<reader>"):
      "c": [[status index, count], ...] every read counted, passes included;
      "g": the reads that did not pass, grouped: one group per identical failure, as
           [failure, [cell index, ...], [max diff, ...] (only where recorded)]; a failure is an index into
           "failures", each stored once for the whole grid: [status, stage, reason, known issue, message,
           config fields the reader does not know] (texts are indices into "strings"; trailing empties
           dropped); not-applicable reads are groups too (their cell indices cost a few bytes);
      "d": [passing reads whose saved config has fields this reader does not know, [[field, count], ...]];
      "u": an index into "unread", the lists of cells with no read for a square (stored once per distinct list:
           it is usually the cells the writer saved no artifact of).
    Passing reads are counts, not a list: a cell that neither a group nor the square's unread list names
    passed there.
    """
    names = list(statuses.BY_NAME)
    index = {s: i for i, s in enumerate(names)}
    text = _Strings()
    failures: dict[tuple, int] = {}
    squares: dict[str, dict] = {}
    for k, crow in enumerate(cross["cells"]):
        for e in crow["entries"]:
            name = f"{e['writer']}|{e['reader']}"
            sq = squares.get(name)
            if sq is None:
                sq = squares[name] = {"c": Counter(), "g": {}, "d": Counter(), "dn": 0, "read": set()}
            status = e["status"]
            sq["c"][index[status]] += 1
            sq["read"].add(k)
            dropped = e.get("dropped_config_fields") or []
            if status == "pass":
                if dropped:
                    sq["dn"] += 1
                    sq["d"].update(dropped)
                continue
            message = e.get("message")
            failure = (index[status], text(e.get("stage")), text(e.get("reason")), text(e.get("known_issue")),
                       text(message if message and message.strip() != (e.get("reason") or "").strip() else None),
                       text(", ".join(dropped) or None))
            key = failures.setdefault(failure, len(failures))
            group = sq["g"].setdefault(key, ([], []))
            group[0].append(k)
            group[1].append(_diff(e.get("max_abs_diff")))
    by_key = {k: f for f, k in failures.items()}
    out = {}
    unread: dict[tuple, int] = {}
    every = range(len(cross["cells"]))
    for name, sq in squares.items():
        groups = sorted(sq["g"].items(), key=lambda kv: (statuses.RANK[names[by_key[kv[0]][0]]], -len(kv[1][0]),
                                                          kv[1][0]))
        out[name] = {"c": sorted(([s, n] for s, n in sq["c"].items()), key=lambda sn: statuses.RANK[names[sn[0]]]),
                     "g": [_trim([key, cells, diffs if any(d is not None for d in diffs) else None])
                           for key, (cells, diffs) in groups]}
        if sq["dn"]:
            out[name]["d"] = [sq["dn"], sorted(([f, n] for f, n in sq["d"].items()), key=lambda fn: (-fn[1], fn[0]))]
        missing = tuple(k for k in every if k not in sq["read"])
        if missing:
            out[name]["u"] = unread.setdefault(missing, len(unread))
    return {"cells": [crow["cell_id"] for crow in cross["cells"]], "squares": out, "strings": text.items,
            "failures": [_trim(list(f)) for f in failures], "unread": [list(m) for m in unread]}


def _worst(counts: dict) -> str:
    shown = [s for s in counts if s != "skipped"] or list(counts)
    return min(shown, key=lambda s: STATUS_RANK[s]) if shown else "skipped"


def _json_for_script(value):
    """Compact JSON for a <script type="application/json"> element: <, > and & escaped (as Jinja's tojson
    does), so that no string in it can end the element."""
    import json

    from markupsafe import Markup

    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
                  .replace("'", "\\u0027"))


def cross_model(cross: dict | None) -> dict | None:
    if cross is None:
        return None
    names = [e["name"] for e in cross["environments"]]
    squares = {(s["writer"], s["reader"]): s for s in cross["grid"]}
    grid = []
    for w in names:
        line = []
        for r in names:
            s = squares.get((w, r))
            if s is None:
                line.append(None)
                continue
            worst = _worst(s["counts"])
            bad = sum(n for st, n in s["counts"].items() if statuses.outcome(st) == "fail" or statuses.is_red(st))
            line.append({"writer": w, "reader": r, "status": worst, "glyph": GLYPHS[worst], "total": s["total"],
                         "bad": bad, "direction": s["direction"],
                         "title": f"written by {w}, read by {r} ({s['direction']}): " + ", ".join(
                             f"{n} {st}" for st, n in s["counts"].items())})
        grid.append({"writer": w, "squares": line})
    return {"envs": cross["environments"], "grid": grid, "findings": cross["findings"],
            "reads": sum(s["total"] for s in cross["grid"]), "cells": len(cross["cells"])}


def html_page(matrix: dict, *, cross: dict | None = None, previous: dict | None = None) -> str:
    from harness.reporting.charts import passrate_svg
    from markupsafe import Markup

    envs = matrix["environments"]
    rows = overview.observed_rows(matrix)
    hidden = len(matrix["cells"]) - len(rows)
    env_names = [e["name"] for e in envs]
    groups = overview.heat_groups(rows)
    present = {e["status"] for r in rows for e in r["entries"].values()}
    legend = [{"status": s, "glyph": GLYPHS[s], "short": SHORT[s], "meaning": statuses.BY_NAME[s].meaning,
               "present": s in present} for s in statuses.BY_NAME]
    return environment().get_template("matrix.html.j2").render(
        css=inline("matrix.css", "style"), js=inline("matrix.js", "script"),
        chart=Markup(passrate_svg(matrix)), generated_at=matrix["generated_at"], hidden=hidden,
        numbers=overview.numbers(matrix), newest=overview.failing_on_newest(matrix),
        changes=overview.changes_since(previous, matrix), unreported=overview.unreported(matrix),
        trouble=overview.env_trouble(matrix), limit=overview.HEADLINE_LIMIT,
        fixed=[(r["cell_id"], n) for r in rows for n in env_names if r["entries"][n]["status"] == "fixed"],
        envs=[{"name": e["name"], "versions": _versions(e), "state": e["state"], "reason": e["reason"] or "",
               "peft": e["versions"].get("peft") or "?", "transformers": e["versions"].get("transformers") or "?",
               "summary": ", ".join(f"{n} {s}" for s, n in sorted(e["summary"].items()))} for e in envs],
        groups=[{"family": g["family"], "method": g["method"],
                 "rows": [{"cell_id": r["cell_id"], "label": r["cell_id"][len(r["family"]) + 1:]
                           if r["cell_id"].startswith(r["family"] + "-") else r["cell_id"],
                           "squares": [r["entries"][n]["status"] for n in env_names]} for r in g["rows"]]}
                for g in groups],
        glyphs=GLYPHS, legend=legend, families=sorted({r["family"] for r in rows}),
        methods=sorted({g["method"] for g in groups}), n_rows=len(rows),
        seeds=overview.seed_strips(matrix), issues=overview.issue_strips(matrix),
        cross_issues=overview.cross_issues(matrix), cross=cross_model(cross),
        cross_summary=overview.cross_summary(cross),
        data=_json_for_script(page_data(matrix, rows)),
        cross_data=_json_for_script(cross_data(cross)) if cross is not None else None,
        status_sets=_json_for_script({"red": list(statuses.RED), "failing": list(statuses.FAILED)}),
    )


def write_html(matrix: dict, path: str, *, cross: dict | None = None, previous: dict | None = None) -> None:
    write_text_atomic(path, html_page(matrix, cross=cross, previous=previous))
