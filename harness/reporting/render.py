"""Render a merged matrix (merge.py) as Markdown (reports/compat.md, GitHub job summaries) and as one
self-contained static HTML page (reports/compat.html: no external file, no network).

The HTML table is rendered here, complete, so the page reads without JavaScript; a small inline script adds
sorting (click a column header) and filters (model family, adapter, status, free text). The page's template,
style sheet and script are files in assets/ (matrix.html.j2, matrix.css, matrix.js), inlined at render time.
The view state lives in the URL fragment, e.g. compat.html#family=vit_224&status=fail&sort=cell&dir=desc, so a
filtered view can be linked, and a headless browser test can drive it. Only http(s) references (known issues,
a case's references) become links; any other (javascript:, data:, ...) is shown as text.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from urllib.parse import urlsplit

from harness.reporting.report import write_text_atomic
from harness.specs import statuses

SYMBOLS = {s.name: s.symbol for s in statuses.BY_NAME.values()}
SHORT = {s.name: s.short for s in statuses.BY_NAME.values()}
STATUS_RANK = statuses.RANK
RED = statuses.RED
DETAIL = statuses.RED + statuses.FAILED  # entries that open to show their stage, exception and message


def _visible_rows(matrix: dict) -> tuple[list[dict], int]:
    """Rows with at least one entry that is not skipped (a CPU-only matrix skips every CUDA cell)."""
    rows = [r for r in matrix["cells"]
            if any(e["status"] not in statuses.NOT_RUN for e in r["entries"].values())
            or all(e["status"] in statuses.MATRIX_ONLY for e in r["entries"].values())]
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


def markdown(matrix: dict, *, details: bool = True) -> str:
    envs = matrix["environments"]
    rows, hidden = _visible_rows(matrix)
    out = ["# peft-compat matrix", "",
           f"{len(matrix['cells'])} cells x {len(envs)} environments, generated {matrix['generated_at']}.", ""]
    out += ["## Environments", "", "| env | peft | transformers | torch | state | summary |",
            "| --- | --- | --- | --- | --- | --- |"]
    for env in envs:
        v = env["versions"]
        summary = ", ".join(f"{n} {s}" for s, n in sorted(env["summary"].items()))
        state = env["state"] if env["state"] == "ok" else f"**{env['state']}**: {_md_escape(env['reason'])}"
        out.append(f"| `{env['name']}` | {v.get('peft') or '?'} | {v.get('transformers') or '?'} | "
                   f"{v.get('torch') or '?'} | {state} | {summary} |")
    out += ["", "## Matrix", ""]
    if hidden:
        out += [f"{hidden} cell(s) skipped in every environment (no CUDA) are left out.", ""]
    out.append("| cell | " + " | ".join(f"`{e['name']}`" for e in envs) + " |")
    out.append("| --- |" + " --- |" * len(envs))
    for row in rows:
        out.append(f"| `{row['cell_id']}` | " + " | ".join(_md_cell(row["entries"][e["name"]]) for e in envs) + " |")
    out += ["", "Legend: " + ", ".join(f"{sym} {SHORT.get(s, s)}" for s, sym in SYMBOLS.items()), ""]
    out += ["## Since when", "", "| case | cells | outcome along the versions |", "| --- | --- | --- |"]
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


def write_markdown(matrix: dict, path: str) -> None:
    write_text_atomic(path, markdown(matrix))


# --- HTML ------------------------------------------------------------------------------------------------------
# The page is assets/matrix.html.j2 (Jinja2, autoescape on) with assets/matrix.css and assets/matrix.js inlined:
# one file that works offline. This module only prepares the values the template shows.

ASSETS = "assets"
WEB_URL = re.compile(r"https?://[^\s<>\"'`\\]+", re.IGNORECASE)


def is_web_url(value) -> bool:
    """Whether a reference may become a link: an http(s) URL, nothing else (no javascript:, data:, file:)."""
    return isinstance(value, str) and WEB_URL.fullmatch(value) is not None and bool(urlsplit(value).netloc)


def asset(name: str) -> str:
    return resources.files("harness.reporting").joinpath(f"{ASSETS}/{name}").read_text(encoding="utf-8")


def _inline(name: str, tag: str):
    """An asset's text for a <style> or <script> element, which ends at the first closing tag in it."""
    from markupsafe import Markup

    text = asset(name)
    if f"</{tag}" in text.lower():
        raise ValueError(f"{ASSETS}/{name} contains '</{tag}': it would end the inline <{tag}> element")
    return Markup(text)


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: asset(name)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.tests["web_url"] = is_web_url
    return env


def _html_entry(env: dict, entry: dict) -> dict:
    status = entry["status"]
    label = SHORT.get(status, status)  # the cell's colour carries the status; emoji fonts are not everywhere
    if entry.get("stage") and status in DETAIL:
        label += f" · {entry['stage']}"
    detail = None
    if status in DETAIL:
        diff = entry.get("max_abs_diff")
        detail = {"stage": entry.get("stage") or "-", "exception": entry.get("exception_type") or "-",
                  "versions": _versions(env), "max_abs_diff": None if diff is None else f"{diff:.3g}",
                  "known_issue": entry.get("known_issue"),
                  "message": entry.get("message") or entry.get("reason") or ""}
    return {"env": env["name"], "status": status, "title": entry.get("reason") or status, "label": label,
            "detail": detail}


def html_page(matrix: dict) -> str:
    envs = matrix["environments"]
    rows, hidden = _visible_rows(matrix)
    since = {s["cell_id"]: s["text"] for s in matrix["since"]}
    shown_statuses = sorted({e["status"] for r in rows for e in r["entries"].values()},
                            key=lambda s: STATUS_RANK.get(s, 99))
    return _environment().get_template("matrix.html.j2").render(
        css=_inline("matrix.css", "style"), js=_inline("matrix.js", "script"), status_rank=STATUS_RANK,
        n_cells=len(matrix["cells"]), generated_at=matrix["generated_at"], hidden=hidden,
        envs=[{"name": env["name"], "versions": _versions(env), "state": env["state"], "reason": env["reason"] or "",
               "failed": env["state"] != "ok", "peft": env["versions"].get("peft") or "?",
               "transformers": env["versions"].get("transformers") or "?",
               "summary": ", ".join(f"{n} {s}" for s, n in sorted(env["summary"].items()))} for env in envs],
        families=sorted({r["family"] for r in rows}), adapters=sorted({r["adapter"] for r in rows}),
        statuses=shown_statuses,
        rows=[{"cell_id": row["cell_id"], "family": row["family"], "adapter": row["adapter"],
               "since": since.get(row["cell_id"], ""), "references": list(row.get("references") or []),
               "statuses": " ".join(sorted({e["status"] for e in row["entries"].values()})),
               "entries": [_html_entry(env, row["entries"][env["name"]]) for env in envs]} for row in rows],
    )


def write_html(matrix: dict, path: str) -> None:
    write_text_atomic(path, html_page(matrix))
