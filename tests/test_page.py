"""compat.html in a real headless Chromium (DevTools protocol over a pipe, tests/chromium.py): the overview's
numbers are the JSON's, the filters show the rows the JSON says, a permalink opens its cell's panel with the
record and the commands that reproduce it, a square of the writer x reader grid opens the reads behind it.
Each test keeps a screenshot in its tmp_path (printed: run with -s to see where)."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from urllib.parse import quote

import pytest
from chromium import CHROMIUM, Browser
from matrix_fixtures import CASES, report, write
from page_fixtures import cross_table

from harness.reporting import merge as hmerge
from harness.reporting.diff import compare
from harness.reporting.render import GLYPHS, chart_path, html_page, markdown
from harness.running.repro import safe_name
from harness.specs import statuses

BERT, VIT, IA3 = (c[0] for c in CASES)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: the page is tested in a real "
                                    "headless browser (apt-get install -y chromium)")
ENVS = [("peft012-tf445", "0.12.0", "4.45.2"), ("peft014-tf447", "0.14.0", "4.47.1"),
        ("peft021-tf523", "0.21.2", "5.23.0")]


def _reports(folder, by_env):
    for (name, peft, tf), statuses_ in zip(ENVS, by_env):
        write(folder / f"{name}.json", report(name, peft, tf, statuses_))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A previous run, and the current one (regressions of BERT on the two newest pairs, a fix of ViT on
    peft014), one environment that could not be set up, and a cross-version table beside it."""
    old = tmp_path_factory.mktemp("previous")
    _reports(old, [{BERT: "pass", VIT: "error", IA3: "not-applicable"}, {BERT: "pass", VIT: "fail", IA3: "pass"},
                   {BERT: "pass", VIT: "expected-failure", IA3: "pass"}])
    previous = hmerge.merge_files([str(old)], str(old / "compat.json"), render=False)
    d = tmp_path_factory.mktemp("reports")
    _reports(d, [{BERT: "pass", VIT: "error", IA3: "not-applicable"}, {BERT: "fail", VIT: "pass", IA3: "pass"},
                 {BERT: "error", VIT: "expected-failure", IA3: "pass"}])
    hmerge.write_stub(str(d / "peft07-tf436.json"), "peft07-tf436", "no wheel for tokenizers")
    matrix = hmerge.merge_files([str(d)], str(d / "compat.json"), previous=str(old / "compat.json"))
    cross = cross_table(n_cells=6)
    (d / "compat.html").write_text(html_page(matrix, cross=cross, previous=previous))
    return {"dir": d, "matrix": matrix, "previous": previous, "previous_path": old / "compat.json", "cross": cross,
            "html": d / "compat.html"}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH")
    with Browser() as b:
        yield b


def visible_rows(page) -> list[str]:
    return page.eval("Array.from(document.querySelectorAll('#heat tbody:not([hidden]) tr[id]:not([hidden])'))"
                     ".map(tr => tr.id)")


def shot(page, tmp_path, name: str) -> str:
    path = page.screenshot(tmp_path / name)
    print(f"screenshot: {path}")
    return path


# --- without a browser ------------------------------------------------------------------------------------------

def test_page_is_one_self_contained_file(site):
    text = site["html"].read_text()
    assert "<script src" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    assert "<svg" in text  # the chart is inline
    # every environment, the env that did not install with its reason, every visible cell has a row anchor
    assert "no wheel for tokenizers" in text
    for case in (BERT, VIT, IA3):
        assert f'<tr id="{case}[cpu-fp32]">' in text


def test_markdown_leads_with_findings_and_links_its_chart(site, tmp_path):
    matrix = site["matrix"]
    md = (site["dir"] / "compat.md").read_text()
    assert md.index("## Findings") < md.index("## Pass rate per release") < md.index("## Matrix")
    assert "**On the newest releases** (`peft021-tf523`" in md
    assert f"`{BERT}[cpu-fp32]` error at load" in md
    assert "**Since the previous run**" in md and "2 regression(s), 1 fix(es)" in md
    svg_path = chart_path(str(site["dir"] / "compat.md"))
    assert f"![pass rate per release and per family]({svg_path.rsplit('/', 1)[-1]})" in md
    svg = ET.parse(svg_path).getroot()  # a well-formed standalone SVG: one bar per environment
    ns = {"s": "http://www.w3.org/2000/svg"}
    titles = [t.text for t in svg.iterfind(".//s:g/s:title", ns)]
    assert sum(1 for t in titles if " observed outcomes pass" in t) == len(matrix["environments"])
    assert "`peft014-tf447` | 0.14.0 / 4.47.1 | `" in md and "67%" in md  # 2 of 3 pass, also as a text bar
    assert markdown(matrix, previous=None).count("Since the previous run") == 0


def test_every_status_has_its_own_glyph():
    assert set(GLYPHS) == set(statuses.BY_NAME)
    assert len(set(GLYPHS.values())) == len(GLYPHS)  # the shape tells the status without the colour


# --- in Chromium -----------------------------------------------------------------------------------------------

@needs_chromium
def test_overview_numbers_are_the_json_numbers(site, browser, tmp_path):
    matrix = json.loads((site["dir"] / "compat.json").read_text())
    page = browser.open(site["html"].as_uri())
    shown = page.eval("Object.fromEntries(Array.from(document.querySelectorAll('[data-n]'))"
                      ".map(e => [e.dataset.n, +e.textContent]))")
    by_status = page.eval("Object.fromEntries(Array.from(document.querySelectorAll('[data-status-count]'))"
                          ".map(e => [e.dataset.statusCount, +e.textContent]))")
    shot(page, tmp_path, "overview.png")
    entries = Counter(e["status"] for row in matrix["cells"] for e in row["entries"].values())
    assert by_status == dict(entries)
    assert shown["cells"] == len(matrix["cells"]) == 3
    assert shown["environments"] == len(matrix["environments"]) == 4
    assert shown["entries"] == sum(entries.values()) == 12
    assert shown["red"] == sum(n for s, n in entries.items() if statuses.is_red(s))
    assert shown["passed"] == entries["pass"]
    newest = [row for row in matrix["cells"] if statuses.outcome(row["entries"]["peft021-tf523"]["status"]) == "fail"]
    assert shown["newest-failing"] == len(newest) == 2
    assert shown["newest-unexpected"] == sum(statuses.is_red(r["entries"]["peft021-tf523"]["status"]) for r in newest)
    result = compare(site["previous"], matrix)
    assert shown["regressions"] == len(result["regressions"]) == 2
    assert shown["fixes"] == len(result["fixes"]) == 1


def _expected(matrix, keep):
    return sorted(r["cell_id"] for r in matrix["cells"] if keep(r))


@needs_chromium
@pytest.mark.parametrize("fragment, keep", [
    ("", lambda r: True),
    ("family=vit_224", lambda r: r["family"] == "vit_224"),
    ("method=ia3", lambda r: r["method"] == "ia3"),
    ("status=fail", lambda r: any(e["status"] == "fail" for e in r["entries"].values())),
    ("status=not-applicable", lambda r: any(e["status"] == "not-applicable" for e in r["entries"].values())),
    ("status=red&env=peft021-tf523", lambda r: statuses.is_red(r["entries"]["peft021-tf523"]["status"])),
    ("status=failing&env=peft021-tf523",
     lambda r: statuses.outcome(r["entries"]["peft021-tf523"]["status"]) == "fail"),
    ("status=env-failed", lambda r: True),
    ("family=bert_classifier&status=pass", lambda r: r["family"] == "bert_classifier"),
    ("family=vit_224&status=not-applicable", lambda r: False),
    ("q=posemb", lambda r: "posemb" in r["cell_id"]),
])
def test_filters_show_what_the_json_says(site, browser, fragment, keep):
    matrix = site["matrix"]
    page = browser.open(site["html"].as_uri() + (f"#{fragment}" if fragment else ""))
    expected = _expected(matrix, keep)
    assert sorted(visible_rows(page)) == expected
    assert page.eval("document.getElementById('count').dataset.shown") == str(len(expected))


@needs_chromium
def test_a_filter_chosen_in_the_page_goes_into_the_url(site, browser):
    page = browser.open(site["html"].as_uri())
    page.eval("const s = document.getElementById('f-status'); s.value = 'fail'; s.dispatchEvent(new Event('change'))")
    assert page.eval("location.hash") == "#status=fail"
    assert visible_rows(page) == [f"{BERT}[cpu-fp32]"]


@needs_chromium
def test_a_permalink_opens_its_cell_with_the_record_and_the_commands(site, browser, tmp_path):
    cell, env = f"{BERT}[cpu-fp32]", "peft021-tf523"
    page = browser.open(site["html"].as_uri() + f"#cell={quote(cell)}&at={env}")
    shot(page, tmp_path, "permalink.png")
    assert page.eval("document.getElementById('panel').hidden") is False
    assert page.eval("document.getElementById('panel-title').textContent") == cell
    text = page.eval("document.getElementById('panel-body').innerText")
    entry = site["matrix"]["cells"][0]["entries"][env]
    assert entry["status"] == "error" and entry["stage"] == "load"
    for expected in ("error", "load", "builtins.KeyError", entry["message"], "tolerance 1.00e-5",
                     "peft 0.21.2, transformers 5.23.0, torch 2.13.0+cpu",
                     f"tox -e {env} -- -k '{cell}'", f"--keep-failed kept/",
                     f".tox/{env}/bin/python kept/{safe_name(cell)}/repro.py",
                     "'peft==0.21.2' 'transformers==5.23.0'"):
        assert expected in text, expected
    # the square of the heat map is marked, and a click elsewhere writes that entry's permalink
    assert page.eval(f"document.getElementById({json.dumps(cell)}).cells[{1 + 3}].classList.contains('sel')")
    page.eval(f"document.getElementById({json.dumps(VIT + '[cpu-fp32]')}).cells[1].click()")
    assert page.eval("location.hash") == f"#cell={quote(VIT + '[cpu-fp32]', safe='')}&at=peft07-tf436"
    assert page.eval("document.getElementById('panel-title').textContent") == f"{VIT}[cpu-fp32]"


HOSTILE_MESSAGE = 'the reloaded model does not reproduce the logits <img src=x onerror="document.body.dataset.pwned=1">'
NEW, OLD = "peft021-tf523", "peft012-tf445"
# the reads of NEW's artifacts by OLD, per cell: (status, stage, exception, message, max diff, known issue, dropped)
TYPE_ERROR = "LoraConfig.__init__() got an unexpected keyword argument 'use_dora'"
DORA = ("error", "load", "builtins.TypeError", TYPE_ERROR, None, None, ["use_dora"])
READS = {
    "bert_classifier-lora-dora[cpu-fp32]": DORA,
    "llama_causal-lora-dora[cpu-fp32]": DORA,
    "vit_224-lora-dora[cpu-fp32]": DORA,
    "bert_classifier-lora-peft_pickle[cpu-bf16]": ("fail", "compare", "CheckFailed", HOSTILE_MESSAGE, 0.2134567, None,
                                                   []),
    "vit_224-lora-posemb_module-peft_safetensors[cpu-fp32]": (
        "expected-failure", "load", "builtins.KeyError", "'base_model.model.vit.embeddings.patch_embeddings'", None,
        "https://github.com/huggingface/peft/issues/2099", []),
    "wav2vec2_ctc-loha[cpu-fp32]": ("not-applicable", None, None, "requires peft>=0.14 (installed: 0.12.0)", None,
                                    None, []),
    "llama_causal-lora-peft_safetensors[cpu-fp32]": ("pass", None, None, None, 1e-7, None, []),
    "resnet_classifier-lora-peft_safetensors[cpu-fp32]": ("pass", None, None, None, 0.0, None, ["layer_replication"]),
}
UNREAD = "wav2vec2_ctc-lora-peft_safetensors[cpu-fp32]"  # read by NEW itself only: OLD has no read of it
OLD_BY_NEW = "bert_classifier-lora-peft_safetensors[cpu-fp32]"  # the one read of OLD's artifacts: NEW fails it


@pytest.fixture(scope="module")
def cross_site(site, tmp_path_factory):
    """The page with a cross-version table built by the real build_cross from read records: OLD reads NEW's
    artifacts (failures of several kinds, passes, a not-applicable read), NEW reads its own (all pass) and
    one of OLD's (a silent fail)."""
    from harness.reporting.crosstable import build_cross

    versions = {NEW: ("0.21.2", "5.23.0"), OLD: ("0.12.0", "4.45.2")}

    def record(cell_id, writer, status, stage=None, exc=None, message=None, diff=None, known=None, dropped=()):
        family = cell_id.split("-")[0]
        return {"cell_id": cell_id, "case_id": cell_id.split("[")[0], "family": family, "adapter": "LoraConfig",
                "method": "lora", "save_mode": "peft_safetensors", "load_mode": "peft_from_pretrained",
                "device": "cpu", "dtype": cell_id.split("-")[-1].rstrip("]"), "status": status, "stage": stage,
                "observed_status": "error" if status == "expected-failure" else None, "max_abs_diff": diff,
                "exception_type": exc, "message": message, "warnings": [], "dropped_config_fields": list(dropped),
                "known_issue": {"reference": known, "stage": stage} if known else None,
                "writer": {"name": writer, "peft": versions[writer][0], "transformers": versions[writer][1],
                           "verdict": {"status": "pass"}}}

    def read_report(reader, cells):
        return {"environment": {"tox_env": f"{reader}-read", "peft": versions[reader][0],
                                "transformers": versions[reader][1], "torch": "2.13.0+cpu", "python": "3.11.7"},
                "cells": cells}

    by_old = [record(c, NEW, *r) for c, r in READS.items()]
    by_new = [record(c, NEW, "pass", diff=0.0) for c in [*READS, UNREAD]] + [
        record(OLD_BY_NEW, OLD, "fail", "compare", "CheckFailed", "the reloaded model does not reproduce the logits",
               0.5)]
    cross = build_cross([("old-read.json", read_report(OLD, by_old)), ("new-read.json", read_report(NEW, by_new))])
    d = tmp_path_factory.mktemp("cross")
    (d / "compat.html").write_text(html_page(site["matrix"], cross=cross))
    return {"cross": cross, "html": d / "compat.html"}


def _reads(cross, w, r):
    return {row["cell_id"]: e for row in cross["cells"] for e in row["entries"] if (e["writer"], e["reader"]) == (w, r)}


@needs_chromium
def test_a_square_of_the_cross_grid_opens_the_reads_behind_it(cross_site, browser, tmp_path):
    cross = cross_site["cross"]
    page = browser.open(cross_site["html"].as_uri() + "#cross")
    page.click(f'#crossgrid td[data-w="{NEW}"][data-r="{OLD}"] a')
    shot(page, tmp_path, "cross.png")
    assert page.eval("location.hash") == f"#w={NEW}&r={OLD}"
    assert page.eval(f"document.querySelector('#crossgrid td[data-w=\"{NEW}\"][data-r=\"{OLD}\"]')"
                     ".classList.contains('sel')")
    # the counts per status are cross.json's square
    [square] = [s for s in cross["grid"] if (s["writer"], s["reader"]) == (NEW, OLD)]
    counts = page.eval("Object.fromEntries(Array.from(document.querySelectorAll('#cross-counts [data-count]'))"
                       ".map(e => [e.dataset.count, +e.textContent]))")
    assert counts == square["counts"] and sum(counts.values()) == len(READS)
    # every read that did not pass is listed, in a group of its status, with its reason; passes only counted
    groups = page.eval("Array.from(document.querySelectorAll('#panel-body .rgroup')).map(g => ({status: "
                       "g.dataset.status, n: +g.dataset.n, text: g.textContent, reads: Array.from("
                       "g.querySelectorAll('a.read')).map(a => a.dataset.read)}))")
    reads = _reads(cross, NEW, OLD)
    listed = {c: g for g in groups for c in g["reads"]}
    assert set(listed) == {c for c, e in reads.items() if e["status"] != "pass"}
    for cell_id, e in reads.items():
        if e["status"] == "pass":
            continue
        g = listed[cell_id]
        assert g["status"] == e["status"] and g["n"] == len(g["reads"])
        assert (e["known_issue"] or e["reason"]) in g["text"], (cell_id, g["text"])
    [errors] = [g for g in groups if g["status"] == "error"]  # three identical failures: one group
    assert errors["n"] == 3 and TYPE_ERROR in errors["text"] and "use_dora" in errors["text"]
    assert "0.213" in listed["bert_classifier-lora-peft_pickle[cpu-bf16]"]["text"]  # a fail shows its max diff
    note = page.eval("document.getElementById('pass-note').innerText")
    assert f"The {square['counts']['pass']} passing read(s) are counted, not listed" in note
    assert "1 of them saved config fields this reader does not know" in note and "layer_replication (1)" in note
    unread = len(cross["cells"]) - len(reads)
    assert unread == 2 and f"{unread} cell(s) of the table were not read by this pair" in note
    assert page.eval("document.body.dataset.pwned") is None  # a message is text, never markup
    assert "reproduce the logits <img" in page.eval("document.getElementById('panel-body').innerText")
    # the square that reads itself: every read passed, nothing is listed
    page.click(f'#crossgrid td[data-w="{NEW}"][data-r="{NEW}"] a')
    assert page.eval("document.querySelectorAll('#panel-body a.read').length") == 0
    assert "Every read that applies passed." in page.eval("document.getElementById('panel-body').innerText")


@needs_chromium
def test_the_overview_sums_up_the_cross_grid_with_the_json_numbers(cross_site, browser, tmp_path):
    cross = cross_site["cross"]
    page = browser.open(cross_site["html"].as_uri())
    shot(page, tmp_path, "overview-cross.png")
    shown = page.eval("Object.fromEntries(Array.from(document.querySelectorAll('#cross-summary [data-n]'))"
                      ".map(e => [e.dataset.n, +e.textContent]))")
    by_status = page.eval("Object.fromEntries(Array.from(document.querySelectorAll('[data-cross-count]'))"
                          ".map(e => [e.dataset.crossCount, +e.textContent]))")
    reads = [e for row in cross["cells"] for e in row["entries"]]
    assert by_status == dict(Counter(e["status"] for e in reads))
    assert shown["cross-reads"] == len(reads) == 2 * len(READS) + 2
    assert shown["cross-red"] == sum(statuses.is_red(e["status"]) for e in reads) == 5
    assert shown["cross-loud"] == 4 and shown["cross-silent"] == 2  # the expected failure is an error underneath
    assert shown["cross-newest-failing"] == 1  # the newest reader, NEW, fails its one read of OLD's artifacts
    causes = page.eval("Array.from(document.querySelectorAll('#cross-reasons li')).map(li => li.innerText)")
    assert TYPE_ERROR in causes[0] and "3 reads in 1 pairs" in causes[0]
    page.click("#cross-reasons li a")
    assert page.eval("location.hash") == f"#w={NEW}&r={OLD}"
    assert page.eval("document.getElementById('panel').hidden") is False


@needs_chromium
def test_a_permalink_to_a_cross_read_opens_that_read(cross_site, browser, tmp_path):
    cell = "bert_classifier-lora-peft_pickle[cpu-bf16]"
    page = browser.open(cross_site["html"].as_uri() + f"#w={NEW}&r={OLD}&read={quote(cell)}")
    shot(page, tmp_path, "cross-read.png")
    box = page.eval("document.getElementById('read').innerText")
    assert page.eval("document.getElementById('read').dataset.status") == "fail"
    for expected in (cell, "fail", "compare", HOSTILE_MESSAGE, "0.213", f"at the writer, {NEW}",
                     f"at the reader, {OLD}"):
        assert expected in box, expected
    assert page.eval("Array.from(document.querySelectorAll('#panel-body a.read.sel')).map(a => a.dataset.read)") \
        == [cell]
    assert f"tox -e {OLD}-read -- --writer {NEW} -k '{cell}'" in page.eval(
        "document.querySelector('#panel-body pre.cmd').innerText")
    # a click on another read of the list moves the permalink to it
    other = "vit_224-lora-dora[cpu-fp32]"
    page.click(f'#panel-body a.read[data-read="{other}"]')
    page.wait_for(f"location.hash === {json.dumps('#' + f'w={NEW}&r={OLD}&read=' + quote(other, safe=''))}")
    assert page.eval("document.getElementById('read').dataset.status") == "error"
    # a passing read is not listed, yet its permalink says that it passed; a cell the pair did not read says so
    page = browser.open(cross_site["html"].as_uri() + f"#w={NEW}&r={OLD}&read="
                        + quote("llama_causal-lora-peft_safetensors[cpu-fp32]"))
    assert page.eval("document.getElementById('read').dataset.status") == "pass"
    page = browser.open(cross_site["html"].as_uri() + f"#w={NEW}&r={OLD}&read={quote(UNREAD)}")
    assert page.eval("document.getElementById('read').dataset.status") == "none"
    assert "Not read" in page.eval("document.getElementById('read').innerText")
    # the link from a read to the heat map opens that cell's entry there
    page = browser.open(cross_site["html"].as_uri() + f"#w={NEW}&r={OLD}&read={quote(cell)}")
    page.click("#read a[href^='#cell=']")
    page.wait_for("document.getElementById('panel').dataset.at")
    assert page.eval("document.getElementById('panel').dataset.at") == NEW


def test_merge_previous_flag_and_a_bad_previous_table(site, tmp_path, capsys):
    out = tmp_path / "compat.json"
    previous = site["previous_path"]
    assert hmerge.main([str(site["dir"]), "--out", str(out), "--previous", str(previous)]) == 0
    assert "**Since the previous run**" in (tmp_path / "compat.md").read_text()
    assert 'data-n="regressions">2<' in (tmp_path / "compat.html").read_text()
    bad = tmp_path / "not-a-table.json"
    bad.write_text('{"kind": "something else"}')
    other = tmp_path / "other" / "compat.json"
    assert hmerge.main([str(site["dir"]), "--out", str(other), "--previous", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not-a-table.json" in err[0] and "not a peft-compat matrix" in err[0]
    assert not other.exists()  # refused before anything is written
