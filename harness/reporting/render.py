"""Render a merged matrix (merge.py) as Markdown (reports/compat.md, GitHub job summaries) and as one
self-contained static HTML page (reports/compat.html: no external file, no network).

The HTML table is rendered here, complete, so the page reads without JavaScript; a small inline script adds
sorting (click a column header) and filters (model family, adapter, status, free text). The view state lives
in the URL fragment, e.g. compat.html#family=vit_224&status=fail&sort=cell&dir=desc, so a filtered view can be
linked, and a headless browser test can drive it.
"""
from __future__ import annotations

import html
import json

from harness.specs import statuses

SYMBOLS = {s.name: s.symbol for s in statuses.BY_NAME.values()}
SHORT = {s.name: s.short for s in statuses.BY_NAME.values()}
STATUS_RANK = statuses.RANK
RED = statuses.RED
DETAIL = statuses.RED + statuses.FAILED  # entries that open to show their stage, exception and message


def _write_text(path: str, text: str) -> None:
    import os
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    _write_text(path, markdown(matrix))


# --- HTML ------------------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#222}
table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #ccc;padding:3px 5px;vertical-align:top}
th{background:#f4f4f4;position:sticky;top:0;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.st-pass{background:#e6f6e6}td.st-fail,td.st-error,td.st-crashed,td.st-timeout{background:#fbe1e1}
td.st-fixed{background:#ffd27f}td.st-expected-failure{background:#fff4c2}td.st-env-failed{background:#e8d5f5}
td.st-skipped,td.st-not-applicable,td.st-missing{background:#f7f7f7;color:#888}
details summary{cursor:pointer}details pre{white-space:pre-wrap;max-width:40em;font-size:11px}
.controls label{margin-right:1em}.envfailed{color:#7a1fa2}.muted{color:#777}
tr[hidden]{display:none}
"""

JS = r"""
(function(){
  const table = document.getElementById('matrix');
  const tbody = table.tBodies[0];
  const rows = Array.from(tbody.rows);
  const rank = JSON.parse(document.getElementById('status-rank').textContent);
  const ctl = {family: document.getElementById('f-family'), adapter: document.getElementById('f-adapter'),
               status: document.getElementById('f-status'), q: document.getElementById('f-q')};
  let state = {family: '', adapter: '', status: '', q: '', sort: '', dir: 'asc'};
  function readHash(){
    const p = new URLSearchParams(location.hash.replace(/^#/, ''));
    for (const k of Object.keys(state)) { if (p.has(k)) state[k] = p.get(k); }
    if (state.dir !== 'desc') state.dir = 'asc';
    for (const k of ['family','adapter','status','q']) ctl[k].value = state[k];
  }
  function writeHash(){
    const p = new URLSearchParams();
    for (const [k,v] of Object.entries(state)) { if (v && !(k === 'dir' && v === 'asc')) p.set(k, v); }
    const h = p.toString();
    history.replaceState(null, '', h ? '#' + h : location.pathname + location.search);
  }
  function key(row, col){
    if (col.startsWith('env:')) {
      const td = row.querySelector('td[data-env="' + CSS.escape(col.slice(4)) + '"]');
      const s = td ? td.dataset.status : '';
      return [s in rank ? rank[s] : 99, row.dataset.cell];
    }
    return [row.dataset[col] || '', row.dataset.cell];
  }
  function cmp(a, b){ for (let i = 0; i < a.length; i++){ if (a[i] < b[i]) return -1; if (a[i] > b[i]) return 1; } return 0; }
  function apply(){
    const q = state.q.toLowerCase();
    let shown = 0;
    for (const row of rows){
      const ok = (!state.family || row.dataset.family === state.family)
        && (!state.adapter || row.dataset.adapter === state.adapter)
        && (!state.status || row.dataset.statuses.split(' ').includes(state.status))
        && (!q || row.textContent.toLowerCase().includes(q));
      row.hidden = !ok; if (ok) shown++;
    }
    let ordered = rows.slice();
    if (state.sort){
      ordered.sort((a, b) => cmp(key(a, state.sort), key(b, state.sort)));
      if (state.dir === 'desc') ordered.reverse();
    }
    for (const row of ordered) tbody.appendChild(row);
    for (const th of table.tHead.rows[0].cells){
      th.setAttribute('aria-sort', th.dataset.col === state.sort ? (state.dir === 'desc' ? 'descending' : 'ascending') : 'none');
    }
    const count = document.getElementById('count');
    count.textContent = shown + ' of ' + rows.length + ' rows shown';
    count.dataset.shown = String(shown);
    document.body.dataset.ready = 'yes';
    writeHash();
  }
  for (const k of ['family','adapter','status']) ctl[k].addEventListener('change', () => { state[k] = ctl[k].value; apply(); });
  ctl.q.addEventListener('input', () => { state.q = ctl.q.value; apply(); });
  for (const th of table.tHead.rows[0].cells){
    th.addEventListener('click', () => {
      const col = th.dataset.col;
      if (state.sort === col) state.dir = state.dir === 'asc' ? 'desc' : 'asc'; else { state.sort = col; state.dir = 'asc'; }
      apply();
    });
  }
  window.addEventListener('hashchange', () => { readHash(); apply(); });
  readHash(); apply();
})();
"""


def _e(text) -> str:
    return html.escape(str(text if text is not None else ""), quote=True)


def _options(values) -> str:
    return "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)


def _html_entry(env: dict, entry: dict) -> str:
    status = entry["status"]
    label = SHORT.get(status, status)
    if entry.get("stage") and status in DETAIL:
        label += f" · {entry['stage']}"
    title = entry.get("reason") or status
    inner = _e(label)  # the cell's colour carries the status; emoji fonts are not everywhere
    if status in DETAIL:
        parts = [f"<b>status</b>: {_e(status)}", f"<b>stage</b>: {_e(entry.get('stage') or '-')}",
                 f"<b>exception</b>: {_e(entry.get('exception_type') or '-')}",
                 f"<b>versions</b>: {_e(_versions(env))}"]
        if entry.get("max_abs_diff") is not None:
            parts.append(f"<b>max abs diff</b>: {entry['max_abs_diff']:.3g}")
        if entry.get("known_issue"):
            parts.append(f'<b>known issue</b>: <a href="{_e(entry["known_issue"])}">{_e(entry["known_issue"])}</a>')
        message = entry.get("message") or entry.get("reason") or ""
        inner = (f'<details><summary>{inner}</summary><div class="detail">{"<br>".join(parts)}'
                 f"<pre>{_e(message)}</pre></div></details>")
    return (f'<td class="st-{_e(status)}" data-env="{_e(env["name"])}" data-status="{_e(status)}" '
            f'title="{_e(title)}">{inner}</td>')


def html_page(matrix: dict) -> str:
    envs = matrix["environments"]
    rows, hidden = _visible_rows(matrix)
    since = {s["cell_id"]: s["text"] for s in matrix["since"]}
    families = sorted({r["family"] for r in rows})
    adapters = sorted({r["adapter"] for r in rows})
    statuses = sorted({e["status"] for r in rows for e in r["entries"].values()}, key=lambda s: STATUS_RANK.get(s, 99))
    head = ['<th data-col="cell">cell</th>', '<th data-col="family">family</th>', '<th data-col="adapter">adapter</th>']
    for env in envs:
        cls = ' class="envfailed"' if env["state"] != "ok" else ""
        head.append(f'<th data-col="env:{_e(env["name"])}" title="{_e(_versions(env))}"{cls}>{_e(env["name"])}'
                    f'<br><span class="muted">{_e(env["versions"].get("peft") or "?")} / '
                    f'{_e(env["versions"].get("transformers") or "?")}</span></th>')
    head.append('<th data-col="since">since when</th>')
    body = []
    for row in rows:
        row_statuses = sorted({e["status"] for e in row["entries"].values()})
        cells = [f"<td><code>{_e(row['cell_id'])}</code></td>", f"<td>{_e(row['family'])}</td>",
                 f"<td>{_e(row['adapter'])}</td>"]
        cells += [_html_entry(env, row["entries"][env["name"]]) for env in envs]
        cells.append(f"<td>{_e(since.get(row['cell_id'], ''))}</td>")
        body.append(f'<tr data-cell="{_e(row["cell_id"])}" data-family="{_e(row["family"])}" '
                    f'data-adapter="{_e(row["adapter"])}" data-since="{_e(since.get(row["cell_id"], ""))}" '
                    f'data-statuses="{_e(" ".join(row_statuses))}">' + "".join(cells) + "</tr>")
    env_rows = []
    for env in envs:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(env["summary"].items()))
        env_rows.append(f"<tr><td>{_e(env['name'])}</td><td>{_e(_versions(env))}</td><td>{_e(env['state'])}</td>"
                        f"<td>{_e(env['reason'] or '')}</td><td>{_e(summary)}</td></tr>")
    rank_json = json.dumps(STATUS_RANK).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>peft-compat matrix</title><style>{CSS}</style></head>
<body>
<h1>peft-compat matrix</h1>
<p>{len(matrix['cells'])} cells x {len(envs)} environments, generated {_e(matrix['generated_at'])}.
{f'{hidden} cell(s) skipped in every environment (no CUDA) are left out.' if hidden else ''}</p>
<details><summary>Environments</summary>
<table id="environments"><thead><tr><th>env</th><th>versions</th><th>state</th><th>reason</th><th>summary</th></tr></thead>
<tbody>{''.join(env_rows)}</tbody></table></details>
<p class="controls">
<label>family <select id="f-family"><option value="">all</option>{_options(families)}</select></label>
<label>adapter <select id="f-adapter"><option value="">all</option>{_options(adapters)}</select></label>
<label>status <select id="f-status"><option value="">any</option>{_options(statuses)}</select></label>
<label>search <input id="f-q" type="search"></label>
<span id="count" data-shown="{len(rows)}">{len(rows)} of {len(rows)} rows shown</span></p>
<table id="matrix"><thead><tr>{''.join(head)}</tr></thead>
<tbody>{''.join(body)}</tbody></table>
<p class="muted">Click a column header to sort (an environment column sorts by status); the filters and the sort
are kept in the URL fragment. Red entries open to show stage, exception, message and versions.</p>
<script type="application/json" id="status-rank">{rank_json}</script>
<script>{JS}</script>
</body></html>
"""


def write_html(matrix: dict, path: str) -> None:
    _write_text(path, html_page(matrix))
