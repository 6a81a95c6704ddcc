"""merge (matrix, stubs, since-when), diff (regressions, fixes, new/removed) and the tox.ini matrix itself."""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import skip_unless_installed
from matrix_fixtures import CASES, report, write

from harness.roundtrip.environment import environment
from harness.reporting import diff as hdiff
from harness.reporting import merge as hmerge
from harness.reporting.since_when import since_for_cell
from harness.running.cli import main as cli_main
from harness.reporting.report import ReportError, read_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BERT, VIT, IA3 = (c[0] for c in CASES)


@pytest.fixture
def reports(tmp_path):
    d = tmp_path / "reports"
    d.mkdir()
    # peft 0.12 fails VIT, 0.14 passes it, on the same transformers 4.45 (a peft effect); IA3 is n/a on 0.12
    write(d / "peft012-tf445.json", report("peft012-tf445", "0.12.0", "4.45.2",
                                            {BERT: "pass", VIT: "error", IA3: "not-applicable"}))
    write(d / "peft014-tf445.json", report("peft014-tf445", "0.14.0", "4.45.2",
                                            {BERT: "pass", VIT: "pass", IA3: "pass"}))
    write(d / "peft014-tf447.json", report("peft014-tf447", "0.14.0", "4.47.1",
                                            {BERT: "pass", VIT: "pass", IA3: "pass"}))
    write(d / "peft021-tf523.json", report("peft021-tf523", "0.21.2", "5.23.0",
                                            {BERT: "pass", VIT: "expected-failure"}))
    hmerge.write_stub(str(d / "peft07-tf436.json"), "peft07-tf436", "uv pip install failed: no tokenizers wheel")
    return d


def test_merge_writes_matrix_markdown_and_html(reports, tmp_path):
    out = tmp_path / "out" / "compat.json"
    assert cli_main(["merge", str(reports), "--out", str(out)]) == 0
    matrix = hmerge.read_matrix(str(out))  # validates against matrix.schema.json
    names = [e["name"] for e in matrix["environments"]]
    # columns ordered by (peft, transformers) version, the stub (peft 0.7) first
    assert names == ["peft07-tf436", "peft012-tf445", "peft014-tf445", "peft014-tf447", "peft021-tf523"]
    rows = {r["cell_id"]: r for r in matrix["cells"]}
    assert set(rows) == {f"{c}[cpu-fp32]" for c, _, _ in CASES}
    vit = rows[f"{VIT}[cpu-fp32]"]["entries"]
    assert vit["peft012-tf445"]["status"] == "error" and vit["peft012-tf445"]["stage"] == "load"
    assert "KeyError" in vit["peft012-tf445"]["reason"]
    assert vit["peft021-tf523"]["reason"].startswith("known: https://github.com/huggingface/peft/issues/2099")
    # the env that could not install is a column of env-failed entries, with its reason
    stub_env = matrix["environments"][0]
    assert stub_env["state"] == "env-failed" and "no tokenizers wheel" in stub_env["reason"]
    assert stub_env["versions"]["peft"] == "0.7" and stub_env["versions"]["transformers"] == "4.36"
    assert all(r["entries"]["peft07-tf436"]["status"] == "env-failed" for r in matrix["cells"])
    # a cell a report does not have is "missing", not dropped
    assert rows[f"{IA3}[cpu-fp32]"]["entries"]["peft021-tf523"]["status"] == "missing"
    md = (out.parent / "compat.md").read_text()
    assert "| `peft07-tf436` | 0.7 | 4.36 |" in md and "env-failed" in md
    assert f"`{VIT}[cpu-fp32]`" in md and "## Since when" in md
    page = (out.parent / "compat.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script src" not in page and "<link" not in page


def test_since_when_separates_peft_from_transformers(reports, tmp_path):
    matrix = hmerge.merge_files([str(reports)], str(tmp_path / "compat.json"), render=False)
    since = {s["case_id"]: s for s in matrix["since"]}
    vit = since[VIT]
    # fail on 0.12/4.45, pass on 0.14/4.45 and 0.14/4.47, fail (xfail) on 0.21/5.23: peft alone explains it
    assert vit["explained_by"] == "peft"
    assert vit["changes"][0] == {"package": "peft", "from": "fail@load", "to": "pass", "last_before": "0.12.0",
                                 "first_after": "0.14.0"}
    assert vit["text"] == ("fails at load for peft <= 0.12.0, passes for peft 0.14.0 .. 0.14.0, "
                           "fails at load from peft 0.21.2")
    assert since[BERT]["explained_by"] is None and "every observed environment (4)" in since[BERT]["text"]
    ia3 = since[IA3]
    assert ia3["changes"][0]["from"] == "n/a" and ia3["changes"][0]["first_after"] == "0.14.0"


def test_since_when_ambiguous_and_interaction():
    envs = [{"name": n, "versions": {"peft": p, "transformers": t}} for n, p, t in
            (("a", "0.12.0", "4.44.0"), ("b", "0.14.0", "4.47.0"), ("c", "0.14.0", "4.44.0"), ("d", "0.12.0", "4.47.0"))]

    def row(statuses):
        return {"cell_id": "x[cpu-fp32]", "case_id": "x",
                "entries": {n: {"status": s} for n, s in zip("abcd", statuses)}}

    # only a and b observed: both packages change together -> ambiguous, both explanations given
    ambiguous = since_for_cell(row(["fail", "pass", "skipped", "skipped"]), envs)
    assert ambiguous["explained_by"] == "ambiguous" and "no env pair separates them" in ambiguous["text"]
    # c separates them: transformers 4.44 fails with peft 0.14 -> transformers explains it
    by_tf = since_for_cell(row(["fail", "pass", "fail", "skipped"]), envs)
    assert by_tf["explained_by"] == "transformers" and by_tf["changes"][0]["first_after"] == "4.47.0"
    # fails only for the new peft with the new transformers: neither alone explains it
    both = since_for_cell(row(["pass", "fail", "pass", "pass"]), envs)
    assert both["explained_by"] == "both" and "combination" in both["text"]


def test_expected_env_without_report_is_recorded(reports, tmp_path):
    out = tmp_path / "compat.json"
    assert cli_main(["merge", str(reports), "--out", str(out), "--no-render", "--expect", "peft09-tf438"]) == 0
    matrix = hmerge.read_matrix(str(out))
    env = next(e for e in matrix["environments"] if e["name"] == "peft09-tf438")
    assert env["state"] == "env-failed" and env["report"] is None and "did not install" in env["reason"]
    assert all(r["entries"]["peft09-tf438"]["status"] == "env-failed" for r in matrix["cells"])


def test_stub_cli_writes_a_valid_report(tmp_path):
    out = tmp_path / "peft09-tf438.json"
    assert cli_main(["merge", "--stub", "peft09-tf438", "--reason", "resolver: no solution", "--out", str(out)]) == 0
    stub = read_report(str(out))
    assert stub["cells"] == [] and stub["complete"] is False
    assert stub["incomplete_reason"] == "setup-failed: resolver: no solution"


@pytest.mark.parametrize("content, reason", [
    ("this is not json", "not JSON"),
    (json.dumps({"kind": "peft-compat-report", "cells": []}), "does not match the report schema"),
    (json.dumps([1, 2]), "not a peft-compat report"),
])
def test_merge_rejects_bad_inputs_with_path_and_reason(reports, tmp_path, capsys, content, reason):
    bad = reports / "broken.json"
    bad.write_text(content)
    assert cli_main(["merge", str(reports), "--out", str(tmp_path / "compat.json")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and reason in err
    assert not (tmp_path / "compat.json").exists()


def test_merge_refuses_two_reports_of_one_env(reports, tmp_path):
    shutil.copy(reports / "peft014-tf447.json", reports / "copy.json")
    with pytest.raises(ReportError, match="already given by"):
        hmerge.merge_files([str(reports)], str(tmp_path / "compat.json"))


@pytest.mark.parametrize("strict", [[], ["--strict"]])
def test_merge_of_no_report_is_an_error(tmp_path, capsys, strict):
    empty = tmp_path / "reports"
    empty.mkdir()
    # a folder with only a merged matrix holds no per-env report either
    (empty / "compat.json").write_text(json.dumps({"kind": "peft-compat-matrix"}))
    out = tmp_path / "out" / "compat.json"
    assert cli_main(["merge", str(empty), "--out", str(out), *strict]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "no per-environment report" in err
    assert str(empty) in err
    assert not out.exists()


def test_merge_strict_counts_incomplete_envs_and_missing_entries(tmp_path, capsys):
    d = tmp_path / "reports"
    d.mkdir()
    write(d / "peft014-tf447.json", report("peft014-tf447", "0.14.0", "4.47.1", {BERT: "pass", VIT: "pass"}))
    cut = report("peft021-tf523", "0.21.2", "5.23.0", {BERT: "pass", VIT: "pass"}, complete=False)
    write(d / "peft021-tf523.json", dict(cut, incomplete_reason="interrupted (SIGINT)"))
    out = tmp_path / "compat.json"
    assert cli_main(["merge", str(d), "--out", str(out), "--no-render"]) == 0  # not strict: the table is written
    assert cli_main(["merge", str(d), "--out", str(out), "--no-render", "--strict"]) == 1  # every entry passes
    printed = capsys.readouterr().out
    assert "environments with an incomplete report: peft021-tf523 (interrupted (SIGINT))" in printed
    # complete reports, but one lacks a cell the other has: a "missing" entry is red under --strict
    write(d / "peft021-tf523.json", report("peft021-tf523", "0.21.2", "5.23.0", {BERT: "pass"}))
    assert cli_main(["merge", str(d), "--out", str(out), "--no-render", "--strict"]) == 1
    assert "1 red entries" in capsys.readouterr().out


def test_merge_skips_its_own_output_and_matrices(reports, tmp_path):
    out = reports / "compat.json"
    hmerge.merge_files([str(reports)], str(out), render=False)
    again = hmerge.merge_files([str(reports)], str(reports / "compat2.json"), render=False)
    assert len(again["environments"]) == 5  # compat.json (a matrix) is not read as a report


# --- diff ------------------------------------------------------------------------------------------------------

def _matrix(tmp_path, name, reports_by_env):
    d = tmp_path / name
    d.mkdir()
    for env, (peft, tf, statuses) in reports_by_env.items():
        write(d / f"{env}.json", report(env, peft, tf, statuses))
    out = tmp_path / f"{name}.json"
    hmerge.merge_files([str(d)], str(out), render=False)
    return str(out)


def test_diff_finds_a_planted_regression(tmp_path, capsys):
    old = _matrix(tmp_path, "old", {"peft014-tf447": ("0.14.0", "4.47.1", {BERT: "pass", VIT: "error", IA3: "pass"}),
                                    "peft012-tf445": ("0.12.0", "4.45.2", {BERT: "pass"})})
    new = _matrix(tmp_path, "new", {"peft014-tf447": ("0.14.0", "4.47.1", {BERT: "fail", VIT: "pass"}),
                                    "peft021-tf523": ("0.21.2", "5.23.0", {BERT: "pass"})})
    assert cli_main(["diff", old, new]) == 1
    out = capsys.readouterr().out
    assert f"REGRESSIONS (1):\n  {BERT}[cpu-fp32] @ peft014-tf447: pass -> fail at load" in out
    assert f"fixes (1):\n  {VIT}[cpu-fp32] @ peft014-tf447: error -> pass" in out
    assert "new environments (1):\n  peft021-tf523" in out and "removed environments (1):\n  peft012-tf445" in out
    result = hdiff.compare(hdiff.load_side(old), hdiff.load_side(new))
    assert result["removed_cells"] == [f"{IA3}[cpu-fp32]"] and result["new_cells"] == []
    assert cli_main(["diff", old, new, "--markdown"]) == 1
    md = capsys.readouterr().out
    assert "**1 regression(s)**" in md and "### Regressions (pass -> red)" in md
    assert f"| `{BERT}[cpu-fp32]` | `peft014-tf447` | pass | fail | load |" in md
    # the other way round the fix is a regression (and the regression a fix); the same file: no difference
    back = hdiff.compare(hdiff.load_side(new), hdiff.load_side(old))
    assert [(r["cell_id"], r["new"]) for r in back["regressions"]] == [(f"{VIT}[cpu-fp32]", "error")]
    assert cli_main(["diff", old, old]) == 0
    assert "no differences" in capsys.readouterr().out


def test_diff_of_single_reports_and_new_removed_cells(tmp_path, capsys):
    a = write(tmp_path / "a.json", report("peft014-tf447", "0.14.0", "4.47.1", {BERT: "pass", VIT: "pass"}))
    b = write(tmp_path / "b.json", report("peft021-tf523", "0.21.2", "5.23.0", {BERT: "pass", IA3: "pass"}))
    assert cli_main(["diff", a, b]) == 1  # a cell of the old run that the new one lacks is lost, never green
    out = capsys.readouterr().out
    assert f"new cells (1):\n  {IA3}[cpu-fp32]" in out
    assert f"LOST CELLS (1):\n  {VIT}[cpu-fp32]: in the old run, not in the new one" in out
    assert "environments" not in out  # two single reports: compared cell by cell
    c = write(tmp_path / "c.json", report("peft021-tf523", "0.21.2", "5.23.0", {BERT: "pass", VIT: "pass", IA3: "pass"}))
    assert cli_main(["diff", a, c]) == 0  # only new cells: nothing lost
    assert "LOST" not in capsys.readouterr().out


def test_diff_fails_when_the_new_side_is_incomplete_or_has_lost_cells(tmp_path, capsys):
    """A cell the new run does not show is never read as green: an incomplete new report, an incomplete env in
    a new matrix, and a cell whose new entry is "missing" make diff exit 1, with a line that says so."""
    old = write(tmp_path / "old.json", report("peft014-tf447", "0.14.0", "4.47.1", {BERT: "pass", VIT: "error"}))
    cut = report("peft014-tf447", "0.14.0", "4.47.1", {BERT: "pass", VIT: "error"}, complete=False)
    cut["incomplete_reason"] = "interrupted (SIGINT)"
    new = write(tmp_path / "new.json", cut)
    assert cli_main(["diff", old, new]) == 1  # same cells, same statuses: only the new run's completeness is wrong
    out = capsys.readouterr().out
    assert "INCOMPLETE (1):\n  (report): the new run did not finish: interrupted (SIGINT)" in out
    assert "no differences" not in out
    assert cli_main(["diff", new, old]) == 0  # an incomplete OLD side is no reason to fail the new run

    # matrices: an env whose report says complete: false, and an entry that became "missing" (not a regression:
    # it was an error before, and "missing" says nothing about the libraries)
    old_m = _matrix(tmp_path, "old", {"peft014-tf447": ("0.14.0", "4.47.1", {BERT: "pass", VIT: "error"}),
                                      "peft021-tf523": ("0.21.2", "5.23.0", {BERT: "pass", VIT: "pass"})})
    d = tmp_path / "new"
    d.mkdir()
    write(d / "peft014-tf447.json", report("peft014-tf447", "0.14.0", "4.47.1", {BERT: "pass"}))
    write(d / "peft021-tf523.json", report("peft021-tf523", "0.21.2", "5.23.0", {BERT: "pass", VIT: "pass"}))
    new_m = str(tmp_path / "new.json")
    hmerge.merge_files([str(d)], new_m, render=False)
    assert cli_main(["diff", old_m, new_m]) == 1
    out = capsys.readouterr().out
    assert f"LOST CELLS (1):\n  {VIT}[cpu-fp32] @ peft014-tf447: error -> missing" in out
    result = hdiff.compare(hdiff.load_side(old_m), hdiff.load_side(new_m))
    assert result["regressions"] == [] and result["changes"] == []

    write(d / "peft014-tf447.json", dict(report("peft014-tf447", "0.14.0", "4.47.1", {BERT: "pass", VIT: "error"},
                                                complete=False), incomplete_reason="terminated (SIGTERM)"))
    hmerge.merge_files([str(d)], new_m, render=False)
    assert cli_main(["diff", old_m, new_m]) == 1
    out = capsys.readouterr().out
    assert "INCOMPLETE (1):\n  peft014-tf447: the new run did not finish: terminated (SIGTERM)" in out
    assert cli_main(["diff", old_m, new_m, "--markdown"]) == 1
    md = capsys.readouterr().out
    assert "**The new run is incomplete**" in md and "| `peft014-tf447` | terminated (SIGTERM) |" in md


def test_diff_install_failure_is_a_regression(tmp_path):
    old = _matrix(tmp_path, "old", {"peft014-tf447": ("0.14.0", "4.47.1", {BERT: "pass"})})
    d = tmp_path / "new"
    d.mkdir()
    hmerge.write_stub(str(d / "peft014-tf447.json"), "peft014-tf447", "no wheel")
    hmerge.merge_files([str(d)], str(tmp_path / "new.json"), render=False)
    result = hdiff.compare(hdiff.load_side(old), hdiff.load_side(str(tmp_path / "new.json")))
    assert [(r["old"], r["new"]) for r in result["regressions"]] == [("pass", "env-failed")]


def test_diff_rejects_bad_input_with_path(tmp_path, capsys):
    good = write(tmp_path / "a.json", report("peft014-tf447", "0.14.0", "4.47.1", {BERT: "pass"}))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert cli_main(["diff", good, str(bad)]) == 2
    assert f"{bad}: not JSON" in capsys.readouterr().err
    matrix_bad = tmp_path / "m.json"
    matrix_bad.write_text(json.dumps({"kind": "peft-compat-matrix", "cells": []}))
    assert cli_main(["diff", good, str(matrix_bad)]) == 2
    assert f"{matrix_bad}: does not match the matrix schema" in capsys.readouterr().err


def test_diff_planted_regression_on_a_real_cell(tmp_path):
    """One real round trip on the installed versions; then the same report with the verdict planted red."""
    import harness
    from harness.reporting.report import write_report

    case = harness.load_case_file(os.path.join(ROOT, "cases", "bert_classifier-lora-peft_safetensors.toml"))
    record = harness.run_cell(case, "cpu", "fp32")
    assert record["status"] == "pass", record["message"]
    write_report(str(tmp_path / "old.json"), [record], environment=environment())
    planted = dict(record, status="fail", stage="compare", exception_type="CheckFailed", max_abs_diff=0.5,
                   message="planted: max abs diff 0.5 > tolerance 1e-05")
    write_report(str(tmp_path / "new.json"), [planted], environment=environment())
    result = hdiff.compare(hdiff.load_side(str(tmp_path / "old.json")), hdiff.load_side(str(tmp_path / "new.json")))
    assert [(r["cell_id"], r["old"], r["new"]) for r in result["regressions"]] == \
        [("bert_classifier-lora-peft_safetensors[cpu-fp32]", "pass", "fail")]


# --- tox.ini: the generated matrix ---------------------------------------------------------------------------

def _tox_ini():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(ROOT, "tox.ini"))
    return parser


def _tox_list():
    if shutil.which("tox") is None and subprocess.run([sys.executable, "-m", "tox", "--version"],
                                                      capture_output=True).returncode != 0:
        skip_unless_installed("tox", "tox is not installed in this environment (pip install tox tox-uv)")
    out = subprocess.run([sys.executable, "-m", "tox", "-l", "--root", ROOT], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_tox_env_list_spans_the_versions_and_pins_every_factor():
    names = _tox_list()
    matrix_envs = [n for n in names if hmerge.ENV_NAME_RE.match(n)]
    assert names[0] == "clean" and names[-1] == "merge"
    assert len(matrix_envs) >= 8
    deps = _tox_ini()["testenv"]["deps"]
    pins = {}
    for line in deps.splitlines():
        if ":" in line and not line.strip().startswith("#"):
            factor, req = line.split(":", 1)
            pins[factor.strip()] = req.strip()
    for env in matrix_envs:
        peft_factor, tf_factor = env.split("-")
        assert pins[peft_factor].startswith("peft=="), env
        assert pins[tf_factor].startswith("transformers=="), env
    peft_versions = sorted({pins[e.split("-")[0]] for e in matrix_envs})
    assert "peft==0.7.1" in peft_versions and "peft==0.21.2" in peft_versions
    # the same peft with the last 4.x and the newest 5.x
    assert {"peft021-tf457", "peft021-tf523"} <= set(matrix_envs)
    assert "-c {toxinidir}/constraints.txt" in deps
    set_env = _tox_ini()["testenv"]["set_env"]
    assert "UV_CONSTRAINT = {toxinidir}/constraints.txt" in set_env


def _oldest_newest():
    envs = [n for n in _tox_list() if hmerge.ENV_NAME_RE.match(n)]
    return envs[0], envs[-1]


@pytest.mark.matrix
def test_oldest_and_newest_tox_env_end_to_end(tmp_path):
    """The matrix machinery proven end to end: tox builds the oldest and the newest env (uv, shared cache),
    each runs every cell, writes its report and its artifacts; each read env loads both envs' artifacts
    (backward, forward and the diagonal); the merge turns them into compat.json/md/html and cross.json/md,
    with no red entry: every failure across the two releases is a known issue."""
    if os.environ.get("PEFT_COMPAT_SKIP_TOX"):
        pytest.skip("PEFT_COMPAT_SKIP_TOX is set")
    oldest, newest = _oldest_newest()
    work = tmp_path / "tox"
    # private reports / artifacts folders and tox workdir: other runs in the same checkout cannot touch them
    # (with tox-uv and the shared uv cache a fresh env costs seconds)
    reports_dir = tmp_path / "reports"
    env = dict(os.environ, PEFT_COMPAT_REPORTS=str(reports_dir), PEFT_COMPAT_ARTIFACTS=str(tmp_path / "artifacts"))
    envs = f"{oldest},{newest},{oldest}-read,{newest}-read"
    proc = subprocess.run([sys.executable, "-m", "tox", "-e", envs, "-p", "2", "--root", ROOT,
                           "--workdir", os.environ.get("PEFT_COMPAT_TOX_WORKDIR", str(tmp_path / ".tox"))],
                          capture_output=True, text=True, cwd=ROOT, timeout=2400, env=env)
    for env_name in (oldest, newest):
        path = os.path.join(reports_dir, f"{env_name}.json")
        assert os.path.exists(path), f"{env_name} wrote no report:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        rep = read_report(path)
        assert rep["complete"] and rep["environment"]["tox_env"] == env_name
        assert rep["environment"]["torch"].startswith("2.13.0")
        counts = {c["status"] for c in rep["cells"]}
        assert not counts & {"fail", "error", "fixed", "crashed", "timeout"}, \
            [(c["cell_id"], c["status"], c["message"]) for c in rep["cells"] if c["status"] in ("fail", "error", "fixed")]
        read = os.path.join(reports_dir, "cross", f"{env_name}-read.json")
        assert os.path.exists(read), f"{env_name}-read wrote no report:\n{proc.stdout[-4000:]}"
        assert read_report(read)["complete"] and read_report(read)["phase"] == "read"
    out = work / "compat.json"
    matrix = hmerge.merge_files([str(reports_dir)], str(out))
    assert [e["name"] for e in matrix["environments"]] == [oldest, newest]
    assert (work / "compat.md").exists() and (work / "compat.html").exists()
    cross = json.loads((work / "cross.json").read_text())
    assert {(s["writer"], s["reader"], s["direction"]) for s in cross["grid"]} == {
        (oldest, oldest, "same"), (oldest, newest, "backward"), (newest, oldest, "forward"), (newest, newest, "same")}
    red = [(row["cell_id"], e["writer"], e["reader"], e["status"], e["reason"]) for row in cross["cells"]
           for e in row["entries"] if e["status"] in ("fail", "error", "fixed", "crashed", "timeout")]
    assert not red, red
    assert sum(s["counts"].get("pass", 0) for s in cross["grid"] if s["direction"] != "same") > 0


def test_merge_records_which_envs_exercise_each_known_issue(reports, tmp_path, capsys):
    table = tmp_path / "known.toml"
    table.write_text('''
[[issue]]
cases = ["vit_224-*"]
stage = "load"
reference = "https://github.com/huggingface/peft/issues/2099"

[[issue]]
cases = ["bert_classifier-*"]
versions = { peft = "<0.8" }
stage = "save"
reference = "https://example.invalid/never-seen"
''')
    out = tmp_path / "compat.json"
    assert cli_main(["merge", str(reports), "--out", str(out), "--known-issues", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "known issue not exercised by any environment: https://example.invalid/never-seen" in printed
    usage = {k["reference"]: k for k in hmerge.read_matrix(str(out))["known_issues"]}
    assert usage["https://github.com/huggingface/peft/issues/2099"]["seen_in"] == ["peft021-tf523"]
    assert usage["https://example.invalid/never-seen"]["seen_in"] == []
    md = (tmp_path / "compat.md").read_text()
    assert "**none: not exercised**" in md and "| https://github.com/huggingface/peft/issues/2099 | load | all |" in md


def test_reclassify_applies_the_current_table_with_the_recorded_versions(tmp_path):
    from harness.specs.known_issues import parse_known_issues

    rep = report("peft014-tf447", "0.14.0", "4.47.1", {BERT: "pass", VIT: "expected-failure", IA3: "fail"})
    vit = next(c for c in rep["cells"] if c["case_id"] == VIT)
    vit["observed_status"] = "error"
    table = parse_known_issues({"issue": [
        {"cases": [BERT], "stage": "load", "reference": "ref-bert", "versions": {"peft": ">=0.14"}},
        {"cases": [IA3], "stage": "load", "reference": "ref-ia3", "versions": {"peft": "<0.14"}},
    ]})
    hmerge.reclassify(rep, table)
    by_case = {c["case_id"]: c for c in rep["cells"]}
    # a pass under a matching entry is "fixed"; the VIT entry is gone from the table: back to its observed error
    assert by_case[BERT]["status"] == "fixed" and by_case[BERT]["known_issue"]["reference"] == "ref-bert"
    assert by_case[VIT]["status"] == "error" and by_case[VIT]["known_issue"] is None
    # the IA3 entry's versions exclude the report's peft 0.14.0: the failure stays a failure
    assert by_case[IA3]["status"] == "fail"
    assert rep["summary"] == {"fixed": 1, "error": 1, "fail": 1}
    from harness.reporting.report import validate_report
    validate_report(rep)


def test_a_column_of_other_devices_does_not_make_the_cpu_cells_missing(tmp_path):
    """The nightly's <env>-cuda.json holds only CUDA cells: its CPU entries are skipped there, not missing
    (missing is red under --strict); a CPU cell absent from a CPU run stays missing."""
    from matrix_fixtures import cell, environment

    cpu = report("peft021-tf523", "0.21.2", "5.23.0", {c[0]: "pass" for c in CASES})
    gpu = report("peft021-tf523", "0.21.2", "5.23.0", {})
    gpu["cells"] = [cell(*CASES[0], "pass", environment("peft021-tf523", "0.21.2", "5.23.0"), device="cuda")]
    lost = report("peft020-tf514", "0.20.0", "5.14.1", {c[0]: "pass" for c in CASES[1:]})
    matrix = hmerge.build_matrix([("peft021-tf523.json", cpu), ("peft021-tf523-cuda.json", gpu),
                                  ("peft020-tf514.json", lost)])
    by_id = {row["cell_id"]: row["entries"] for row in matrix["cells"]}
    first = f"{CASES[0][0]}[cpu-fp32]"
    assert by_id[first]["peft021-tf523-cuda"]["status"] == "skipped"
    assert by_id[first]["peft020-tf514"]["status"] == "missing"
