"""compat.html in a real headless Chromium, through the plain command line (`--dump-dom`: the DOM after the page's
script ran): the heat map's filters, read from the URL fragment, hide the rows they leave out.

The view state is in the URL fragment (#family=...&method=...&status=...&env=...&q=...), which is what choosing
a filter writes; Chromium loads the page with such a fragment and `--dump-dom` returns the DOM after the
script ran. Rows the filter hides (and groups left empty) carry the `hidden` attribute. tests/test_page.py
drives the page over the DevTools protocol (clicks, the detail panel, permalinks, screenshots).
Install the browser with `apt-get install -y chromium` (Debian); without it these tests skip and say so.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matrix_fixtures import CASES, report, write

from harness.reporting import merge as hmerge
from harness.reporting.render import html_page, markdown

BERT, VIT, IA3 = (c[0] for c in CASES)
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: the HTML page is tested in a "
                                    "real headless browser (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    d = tmp_path_factory.mktemp("reports")
    write(d / "peft012-tf445.json", report("peft012-tf445", "0.12.0", "4.45.2",
                                            {BERT: "pass", VIT: "error", IA3: "not-applicable"}))
    write(d / "peft014-tf447.json", report("peft014-tf447", "0.14.0", "4.47.1",
                                            {BERT: "fail", VIT: "pass", IA3: "pass"}))
    write(d / "peft021-tf523.json", report("peft021-tf523", "0.21.2", "5.23.0",
                                            {BERT: "pass", VIT: "expected-failure", IA3: "pass"}))
    hmerge.write_stub(str(d / "peft07-tf436.json"), "peft07-tf436", "no wheel for tokenizers")
    out = d / "compat.json"
    matrix = hmerge.merge_files([str(d)], str(out))
    return matrix, d / "compat.html"


class Rows(HTMLParser):
    """Rows of table#heat: (cell id, hidden? (the row or its group)) in document order, the row counter and the
    ready flag."""

    def __init__(self):
        super().__init__()
        self.rows, self.count, self.ready = [], None, None
        self._in_heat = False
        self._group_hidden = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._in_heat = a.get("id") == "heat"
        if tag == "tbody" and self._in_heat:
            self._group_hidden = "hidden" in a
        if tag == "tr" and self._in_heat and a.get("id"):
            self.rows.append((a["id"], "hidden" in a or self._group_hidden))
        if a.get("id") == "count":
            self.count = a.get("data-shown")
        if tag == "body":
            self.ready = a.get("data-ready")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_heat = False


def dump_dom(html_file: Path, fragment: str = "") -> Rows:
    profile = tempfile.mkdtemp(prefix="peft-compat-chromium-")
    try:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom",
             html_file.as_uri() + (f"#{fragment}" if fragment else "")],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parser = Rows()
    parser.feed(proc.stdout)
    assert parser.ready == "yes", "the page's script did not run:\n" + proc.stderr[-2000:]
    return parser


def visible(rows: Rows):
    return [cell for cell, hidden in rows.rows if not hidden]


def page_data(text: str) -> dict:
    start = text.index('<script type="application/json" id="page-data">') + len(
        '<script type="application/json" id="page-data">')
    return json.loads(text[start:text.index("</script>", start)])


def test_page_is_self_contained_and_lists_every_failing_detail(page):
    matrix, html_file = page
    text = html_file.read_text()
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", text)
    assert "<script src" not in text and "@import" not in text
    # a failing entry's stage, exception and versions are in the page itself (the panel's data)
    data = page_data(text)
    envs = [e["name"] for e in data["envs"]]
    entry = data["rows"][f"{VIT}[cpu-fp32]"]["e"][envs.index("peft012-tf445")]
    assert data["statuses"][entry[0]] == "error" and entry[1] == "load"
    assert data["strings"][entry[3]] == "builtins.KeyError"  # texts are stored once, in the string table
    assert data["envs"][envs.index("peft012-tf445")] | {} == {
        "name": "peft012-tf445", "state": "ok", "reason": "", "peft": "0.12.0", "transformers": "4.45.2",
        "torch": "2.13.0+cpu", "python": "3.11.7"}
    assert "no wheel for tokenizers" in text  # the env that could not install is in the page
    assert html_page(matrix) == text
    assert "| `peft07-tf436` |" in markdown(matrix)


@needs_chromium
def test_browser_runs_the_script_and_shows_every_row(page):
    _, html_file = page
    rows = dump_dom(html_file)
    assert sorted(visible(rows)) == sorted(f"{c}[cpu-fp32]" for c, _, _ in CASES)
    assert rows.count == "3"


@needs_chromium
@pytest.mark.parametrize("fragment, expected", [
    ("family=vit_224", [f"{VIT}[cpu-fp32]"]),
    ("method=ia3", [f"{IA3}[cpu-fp32]"]),
    ("status=fail", [f"{BERT}[cpu-fp32]"]),
    ("status=error", [f"{VIT}[cpu-fp32]"]),
    ("status=not-applicable", [f"{IA3}[cpu-fp32]"]),
    ("status=env-failed", sorted(f"{c}[cpu-fp32]" for c, _, _ in CASES)),
    ("family=bert_classifier&status=pass", [f"{BERT}[cpu-fp32]"]),
    ("family=vit_224&status=not-applicable", []),
    ("status=failing&env=peft021-tf523", [f"{VIT}[cpu-fp32]"]),  # an expected failure is a failure
    ("status=red&env=peft021-tf523", []),
    ("q=posemb", [f"{VIT}[cpu-fp32]"]),
])
def test_browser_filters(page, fragment, expected):
    _, html_file = page
    rows = dump_dom(html_file, fragment)
    assert sorted(visible(rows)) == expected
    assert rows.count == str(len(expected))
    assert len(rows.rows) == 3  # filtered rows are hidden, not removed


@needs_chromium
def test_browser_on_a_page_from_real_cells(tmp_path):
    """A page merged from a real run (real cells, real versions), not from fixtures."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    report = tmp_path / "local.json"
    run = subprocess.run([sys.executable, "-m", "harness", "run", "-q", "--cases", str(root / "cases"),
                          "--device", "cpu", "--fast", "-k", "bert_classifier-lora-peft*", "-k", "*-lora-bias_all-add_adapter[[]*",
                          "--out", str(report), "--table"], capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, run.stderr
    page = tmp_path / "compat.html"
    everything = dump_dom(page)
    assert int(everything.count) == len(everything.rows) == 5  # pickle + safetensors (fp32, bf16), bias_all
    rows = dump_dom(page, "status=expected-failure")
    assert visible(rows) == ["bert_classifier-lora-bias_all-add_adapter[cpu-fp32]"]


# --- references: only http(s) becomes a link ------------------------------------------------------------------

HOSTILE = ["javascript:alert(document.domain)", "JavaScript:alert(1)", " javascript:alert(1)",
           "data:text/html,<script>alert(1)</script>", "vbscript:msgbox(1)", "file:///etc/passwd",
           "//evil.example/x", "https://ok.example/a\" onmouseover=\"alert(1)", "java\tscript:alert(1)"]
GOOD = ["https://github.com/huggingface/peft/issues/2099", "http://example.org/issue?id=1&x=2"]


def _known_table_links() -> set:
    """The shipped known-issues table's references: the page's strips link them."""
    from harness.reporting.render import is_web_url
    from harness.specs.known_issues import load_known_issues

    return {k.reference for k in load_known_issues() if is_web_url(k.reference)}


KNOWN_TABLE_LINKS = _known_table_links()


class Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.handlers = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.hrefs.append(a.get("href"))
        self.handlers += [k for k in a if k.startswith("on")]


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory):
    """A page whose case references and known-issue references are hostile URLs, merged like real reports."""
    d = tmp_path_factory.mktemp("hostile")
    for i, env in enumerate(("peft014-tf447", "peft021-tf523")):
        doc = report(env, "0.14.0", "4.47.1", {BERT: "expected-failure", VIT: "pass"})
        for cell in doc["cells"]:
            cell["references"] = HOSTILE + GOOD
            if cell["known_issue"]:
                cell["known_issue"]["reference"] = HOSTILE[i]
        write(d / f"{env}.json", doc)
    matrix = hmerge.merge_files([str(d)], str(d / "compat.json"))
    return matrix, d / "compat.html"


def test_only_http_references_become_links_the_others_stay_text(hostile_page):
    matrix, html_file = hostile_page
    text = html_file.read_text()
    anchors = Anchors()
    anchors.feed(text)
    outside = {h for h in anchors.hrefs if not h.startswith("#")}  # the others are the page's own anchors
    assert outside <= set(GOOD) | KNOWN_TABLE_LINKS  # every link out is http(s)
    assert anchors.handlers == []  # no quote in a reference opens an attribute
    assert "JavaScript:alert(1)" in text  # the newest env's known issue, shown as text
    data = text[text.index('id="page-data">'):]
    assert "javascript:alert(document.domain)" in data  # the case references, in the panel's data
    assert "data:text/html,\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in data  # no tag in the JSON
    assert "<script>alert(1)" not in text


@pytest.mark.parametrize("url, link", [(u, False) for u in HOSTILE + ["", None, "https://", "https:x", "ftp://x"]]
                         + [(u, True) for u in GOOD + ["HTTPS://EXAMPLE.ORG"]])
def test_is_web_url(url, link):
    from harness.reporting.render import is_web_url

    assert is_web_url(url) is link


def test_assets_are_inlined_and_name_only_known_statuses():
    from harness.reporting.render import asset
    from harness.specs.statuses import BY_NAME

    css = asset("matrix.css")
    assert set(re.findall(r"\.st-([a-z-]+)", css)) <= set(BY_NAME)  # a renamed status would lose its colour
    assert set(re.findall(r"getElementById\('([\w-]+)'\)", asset("matrix.js"))) <= set(
        re.findall(r'id="([\w-]+)"', asset("matrix.html.j2")))  # every element the script uses is on the page


def test_an_asset_with_its_closing_tag_is_refused(monkeypatch):
    from harness.reporting import templating

    real = templating.asset
    monkeypatch.setattr(templating, "asset", lambda name: real(name) + ("</SCRIPT>" if name == "matrix.js" else ""))
    with pytest.raises(ValueError, match="</script"):
        templating.inline("matrix.js", "script")


@needs_chromium
def test_browser_hostile_references_are_not_links(hostile_page):
    """The panel the script builds for a cell with hostile references: the only links out are http(s)."""
    from chromium import Browser

    _, html_file = hostile_page
    with Browser() as browser:
        page = browser.open(html_file.as_uri() + f"#cell={BERT}%5Bcpu-fp32%5D&at=peft014-tf447")
        hrefs = page.eval("Array.from(document.querySelectorAll('#panel-body a')).map(a => a.getAttribute('href'))")
        handlers = page.eval("Array.from(document.querySelectorAll('#panel-body *')).flatMap(e => "
                             "Array.from(e.attributes).map(a => a.name)).filter(n => n.startsWith('on'))")
        text = page.eval("document.getElementById('panel-body').innerText")
    outside = [h for h in hrefs if not h.startswith("#")]
    assert sorted(set(outside)) == sorted(GOOD)  # every good reference is a link, nothing else is
    assert handlers == []
    for hostile in ("javascript:alert(document.domain)", "data:text/html,<script>alert(1)</script>",
                    "vbscript:msgbox(1)"):
        assert hostile in text  # shown, as text
