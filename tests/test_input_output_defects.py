"""Issue 8: input the harness must refuse up front, and output it must not lose. Every bad input or output path
is one line `error: ...` naming the thing (exit 2; pytest: a usage error), before any cell runs; a record or a
write that fails during a run costs neither the other cells nor the report that was there before."""
from __future__ import annotations

import copy
import dataclasses
import errno
import json
import os
import subprocess
import sys
import tempfile

import pytest

import harness
from harness import load_case_file
from harness.reporting.merge import MatrixError, merge_files, read_matrix
from harness.reporting.report import ReportError, read_report, write_report
from harness.roundtrip.environment import environment
from harness.running.checkpoints import ReportCheckpoints
from harness.running.cli import main
from harness.specs.case import CaseError
from tests.conftest import BERT_LORA, to_toml

CPU_ONLY = {"devices": ["cpu"]}


def cli(capsys, *argv):
    """main(argv) -> (exit code, stderr); never a traceback, and an error is one line."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    if code == 2:
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return code, captured.err


def run_pytest(cwd, *args, env=None):
    cmd = [sys.executable, "-m", "pytest", "-p", "harness.running.plugin", "-p", "no:cacheprovider",
           "--rootdir", str(cwd), "-q", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def no_traceback(result):
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "INTERNALERROR" not in text, text[-3000:]


@pytest.fixture
def previous_report(tmp_path):
    """A valid report from an earlier run; a failed or empty run must leave it byte for byte."""
    path = tmp_path / "out" / "r.json"
    path.parent.mkdir()
    write_report(str(path), [], environment=environment(), complete=True)
    return path


@pytest.fixture
def records(tmp_path_factory):
    """A real record that passes, and a real record of a case whose tolerance (inf) the report schema cannot hold
    (validation refuses such a case; this one was built by hand, as a harness bug would)."""
    d = tmp_path_factory.mktemp("cases")
    path = d / "c.toml"
    path.write_text(to_toml(BERT_LORA))
    case = load_case_file(path)
    broken = dataclasses.replace(case, id="bert_classifier-lora-inf",
                                 tolerance={"fp32": float("inf"), "reason": "x y"})
    return (harness.run_cell(case, "cpu", "fp32", known_issues=[]),
            harness.run_cell(broken, "cpu", "fp32", known_issues=[]))


# --- 1. non-finite numbers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, field, words", [
    ({"tolerance": {"fp32": float("inf"), "reason": "x y z"}}, "tolerance.fp32", "finite"),
    ({"tolerance": {"fp32": float("nan"), "reason": "x y z"}}, "tolerance.fp32", "finite"),
    ({"timeout_s": float("inf")}, "timeout_s", "not a finite number of seconds"),
    ({"timeout_s": float("nan")}, "timeout_s", "not a finite number of seconds"),
    ({"timeout_s": 1e20}, "timeout_s", "more than the longest time limit of 86400 s"),
])
def test_a_non_finite_number_in_a_case_is_refused_by_validate(write_case, case_dir, capsys, changes, field, words):
    path = write_case(**changes)
    for command in ("validate", "list"):
        code, err = cli(capsys, command, "--cases", case_dir)
        assert code == 2 and str(path) in err and f"field '{field}'" in err and words in err


@pytest.mark.parametrize("value, words", [
    ("nan", "not a finite number of seconds"),
    ("inf", "not a finite number of seconds"),
    ("1e20", "more than the longest time limit"),
    ("-1", "must be more than 0 seconds"),
])
def test_a_time_limit_option_that_is_not_a_finite_number_is_refused(write_case, case_dir, previous_report, capsys,
                                                                    value, words):
    write_case(**CPU_ONLY)
    before = previous_report.read_text()
    code, err = cli(capsys, "run", "--cases", case_dir, "--out", previous_report, "-q", "--timeout", value)
    assert code == 2 and err.startswith("error: --timeout") and words in err
    assert previous_report.read_text() == before


def test_pytest_cell_timeout_that_is_not_finite_is_a_usage_error(write_case, case_dir):
    write_case(**CPU_ONLY)
    result = run_pytest(case_dir, "--cases", case_dir, case_dir, "--cell-timeout", "inf")
    no_traceback(result)
    assert result.returncode == 4
    assert "peft-compat: --cell-timeout" in result.stderr and "not a finite number of seconds" in result.stderr


def test_a_record_the_schema_rejects_costs_no_other_cell(records, previous_report):
    good, bad = records
    assert good["status"] == "pass" and bad["tolerance"] == float("inf")
    checkpoints = ReportCheckpoints(str(previous_report))
    kept = checkpoints.add(bad)
    checkpoints.add(good)
    checkpoints.write(complete=True)
    report = read_report(str(previous_report))
    cells = {c["cell_id"]: c for c in report["cells"]}
    assert set(cells) == {good["cell_id"], bad["cell_id"]} and report["complete"] is True
    assert cells[good["cell_id"]]["status"] == "pass"
    broken = cells[bad["cell_id"]]
    assert broken["status"] == "crashed" and broken["exception_type"] == "HarnessError"
    assert "report schema" in broken["message"] and "tolerance" in broken["message"]
    assert kept["status"] == "crashed"  # what the run counts is what the report says


# --- 2. a selection that matches nothing ---------------------------------------------------------------------

@pytest.mark.parametrize("command", [["run", "-q"], ["list"], ["rerun", "-n", "1"]])
@pytest.mark.parametrize("empty", ["-k", "folder"])
def test_an_empty_selection_is_an_error_and_keeps_the_report(write_case, case_dir, tmp_path, previous_report, capsys,
                                                             command, empty):
    if empty == "-k":
        write_case(**CPU_ONLY)
        selection = ["--cases", case_dir, "-k", "bert_classifier-lora-tset"]
    else:
        (tmp_path / "nothing").mkdir()
        selection = ["--cases", tmp_path / "nothing"]
    before = previous_report.read_text()
    out = ["--out", previous_report] if command[0] != "list" else []
    code, err = cli(capsys, *command, *selection, *out)
    assert code == 2 and err.startswith("error: no cell matches")
    assert previous_report.read_text() == before


def test_pytest_with_no_cell_selected_writes_no_report(tmp_path, previous_report):
    """(An empty case folder; a -k that deselects every cell ends the same way: no record arrives. The CLI test
    above covers -k; this one spares the seconds of importing peft to validate a case.)"""
    (tmp_path / "nothing").mkdir()
    before = previous_report.read_text()
    result = run_pytest(tmp_path, "--cases", tmp_path / "nothing", tmp_path / "nothing",
                        "--compat-report", previous_report)
    no_traceback(result)
    assert result.returncode == 5  # pytest: no tests ran
    assert previous_report.read_text() == before
    assert "is not written" in result.stdout


# --- 6. files that are not UTF-8 ---------------------------------------------------------------------------------

NOT_UTF8 = b'id = "bert_classifier-lora-\xff"\nfamily = "bert_classifier"\n'


@pytest.mark.parametrize("which", ["case", "known-issues"])
def test_a_file_that_is_not_utf8_is_one_line_naming_it(write_case, case_dir, tmp_path, capsys, which):
    if which == "case":
        write_case(**CPU_ONLY)
        bad = case_dir / "latin1.toml"
        bad.write_bytes(NOT_UTF8)
        extra = []
    else:
        write_case(**CPU_ONLY)
        bad = tmp_path / "known.toml"
        bad.write_bytes(b'[[issue]]\ncases = ["\xfe"]\nstage = "save"\nreference = "x"\n')
        extra = ["--known-issues", bad]
    commands = [["validate"], ["run", "-q", "--out", tmp_path / "r.json"]] + ([["list"]] if which == "case" else [])
    for command in commands:  # (`list` does not read the known-issues table)
        code, err = cli(capsys, *command, "--cases", case_dir, *extra)
        assert code == 2 and str(bad) in err and "not valid UTF-8" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("which", ["case", "known-issues"])
def test_pytest_names_a_file_that_is_not_utf8(write_case, case_dir, tmp_path, which):
    write_case(**CPU_ONLY)
    if which == "case":
        bad = case_dir / "latin1.toml"
        bad.write_bytes(NOT_UTF8)
        extra = []
    else:
        bad = tmp_path / "known.toml"
        bad.write_bytes(b'[[issue]]\ncases = ["\xfe"]\nstage = "save"\nreference = "x"\n')
        extra = ["--known-issues", bad]
    result = run_pytest(case_dir, "--cases", case_dir, case_dir, *extra)
    no_traceback(result)
    assert result.returncode == 4
    assert f"peft-compat: {bad}: not valid UTF-8" in result.stderr


def test_a_report_that_is_not_utf8_is_one_line_naming_it(write_case, case_dir, tmp_path, capsys):
    write_case(**CPU_ONLY)
    bad = tmp_path / "reports" / "latin1.json"
    bad.parent.mkdir()
    bad.write_bytes(b'{"kind": "peft-compat-report", "x": "\xff"}')
    good = tmp_path / "good.json"
    write_report(str(good), [], environment=environment())
    for argv in (["run", "-q", "--cases", case_dir, "--out", bad, "--resume"],  # resume reads it
                 ["merge", bad.parent, "--out", tmp_path / "compat.json"],  # merge reads every report of a folder
                 ["diff", good, bad]):
        code, err = cli(capsys, *argv)
        assert code == 2 and str(bad) in err and "UTF-8" in err
    assert bad.read_bytes() == b'{"kind": "peft-compat-report", "x": "\xff"}'


# --- 9. output paths --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{file}/sub/r.json"], "is a file, not a folder"),
    (["--keep-failed", "{file}/kept"], "is a file, not a folder"),
    (["--table", "--out", "{tmp}/compat.json"], "would overwrite it"),
    (["--table", "--out", "{tmp}/compat.md"], "would overwrite it"),
    pytest.param(["--out", "/proc/peft-compat-nowhere/r.json"], "cannot create the folder",
                 marks=pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_cell(write_case, case_dir, tmp_path, capsys,
                                                                     argv, words):
    write_case(**CPU_ONLY)
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "compat.json").write_text("the table of an earlier run")
    (tmp_path / "compat.md").write_text("the table of an earlier run")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{file}", str(afile)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "r.json")]
    code, err = cli(capsys, "run", "-q", "--cases", case_dir, *argv)
    assert code == 2 and words in err
    assert afile.read_text() == "x"
    for table in ("compat.json", "compat.md"):
        assert (tmp_path / table).read_text() == "the table of an earlier run"
    assert not (tmp_path / "r.json").exists()


def test_a_full_disk_during_the_run_is_one_error_and_keeps_the_previous_report(write_case, case_dir, previous_report,
                                                                               capsys, monkeypatch):
    write_case(**CPU_ONLY)
    before = previous_report.read_text()
    real_replace = os.replace

    def disk_full(src, dst, *args, **kwargs):
        if os.path.abspath(dst) == str(previous_report):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full)
    code, err = cli(capsys, "run", "-q", "--cases", case_dir, "--out", previous_report)
    assert code == 2 and str(previous_report) in err and os.strerror(errno.ENOSPC) in err
    assert previous_report.read_text() == before
    assert sorted(os.listdir(previous_report.parent)) == ["r.json"]  # no temporary file left


ENOSPC_PLUGIN = """
import errno, os
_replace = os.replace
def _full(src, dst, *args, **kwargs):
    if os.path.basename(dst) == "r.json":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _replace(src, dst, *args, **kwargs)
os.replace = _full
"""


def test_pytest_full_disk_keeps_the_previous_report_and_says_so(write_case, case_dir, tmp_path, previous_report):
    write_case(**CPU_ONLY)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "disk_full.py").write_text(ENOSPC_PLUGIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")]))
    before = previous_report.read_text()
    result = run_pytest(case_dir, "-p", "disk_full", "--cases", case_dir, case_dir, "--compat-report", previous_report,
                        env=env)
    no_traceback(result)
    assert result.returncode == 3  # the cell passed, but its report could not be written
    assert "1 passed" in result.stdout
    assert (f"peft-compat: error: {previous_report}: cannot write the report: {os.strerror(errno.ENOSPC)}"
            in result.stdout)
    assert previous_report.read_text() == before


@pytest.mark.parametrize("option, words", [
    (["--compat-report", "{tmp}"], "is a folder"),
    (["--compat-report", "{file}/r.json"], "is a file, not a folder"),
    (["--keep-failed", "{file}/kept"], "is a file, not a folder"),
])
def test_pytest_refuses_an_output_that_cannot_be_written(write_case, case_dir, tmp_path, option, words):
    write_case(**CPU_ONLY)
    afile = tmp_path / "afile"
    afile.write_text("x")
    option = [a.replace("{tmp}", str(tmp_path)).replace("{file}", str(afile)) for a in option]
    result = run_pytest(case_dir, "--cases", case_dir, case_dir, *option)
    no_traceback(result)
    assert result.returncode == 4 and f"peft-compat: {option[0]}" in result.stderr and words in result.stderr


# --- 11. the Python API leaves no temporary folder ------------------------------------------------------------

def test_run_cell_as_documented_leaves_nothing_in_the_temp_dir(write_case, tmp_path, monkeypatch):
    import peft  # noqa: F401 - importing peft makes torch's inductor cache folder (once per process, torch's own)

    path = write_case(**CPU_ONLY)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    record = harness.run_cell(harness.load_case_file(path), "cpu", "fp32")
    assert record["status"] == "pass"
    assert os.listdir(scratch) == []


# --- 12. smaller ones ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field, words", [
    ({"r": "four"}, "adapter.kwargs.r", "takes int here, got 'four'"),
    ({"r": True}, "adapter.kwargs.r", "takes int here, got True"),
    ({"use_dora": 1}, "adapter.kwargs.use_dora", "takes bool here, got 1"),
    ({"target_modules": "query", "layers_to_transform": [0]}, "adapter.kwargs", "rejects them: ValueError"),
])
def test_adapter_kwargs_are_checked_against_the_installed_config_class(write_case, case_dir, capsys, kwargs, field,
                                                                       words):
    adapter = copy.deepcopy(BERT_LORA["adapter"])
    adapter["kwargs"].update(kwargs)
    path = write_case(adapter=adapter)
    with pytest.raises(CaseError) as info:
        load_case_file(path)
    assert info.value.field == field and words in str(info.value) and "LoraConfig of peft" in str(info.value)
    code, err = cli(capsys, "validate", "--cases", case_dir)
    assert code == 2 and f"field '{field}'" in err


def test_adapter_kwargs_unknown_to_this_peft_are_left_to_the_run(write_case):
    """An option that the installed peft lacks may be one a newer release has: not a validation error, and a
    config class the installed peft lacks is not checked at all (its cells are not-applicable)."""
    import peft

    adapter = copy.deepcopy(BERT_LORA["adapter"])
    adapter["kwargs"]["a_newer_option"] = 3
    assert load_case_file(write_case(adapter=adapter)).adapter_kwargs["a_newer_option"] == 3
    if hasattr(peft, "BoneConfig"):
        pytest.skip("the installed peft has BoneConfig: no config class it lacks to try")
    bone = load_case_file(write_case(name="bone", id="bert_classifier-bone-test",
                                     adapter={"type": "BoneConfig", "kwargs": {"r": "four"}}))
    assert harness.run_cell(bone, "cpu", "fp32")["status"] == "not-applicable"


def test_a_step_size_that_is_a_bool_is_refused(write_case):
    path = write_case(steps=[{"name": "resize_token_embeddings", "size": True}])
    with pytest.raises(CaseError) as info:
        load_case_file(path)
    assert info.value.field == "steps.0.size" and "must be int" in str(info.value)


def _newer_minor(document: dict, cell_key: str) -> dict:
    newer = copy.deepcopy(document)
    newer["schema_version"] = "1.99"
    newer["a_new_optional_field"] = {"from": "a newer harness"}
    for row in newer[cell_key]:
        row["another_new_field"] = 1
    return newer


def test_a_report_of_a_newer_minor_version_is_read(records, tmp_path, capsys):
    good, _ = records
    path = tmp_path / "reports" / "peft021-tf523.json"
    path.parent.mkdir()
    report = write_report(str(tmp_path / "ours.json"), [good], environment=environment())
    path.write_text(json.dumps(_newer_minor(report, "cells")))
    assert read_report(str(path))["cells"][0]["another_new_field"] == 1
    code, _ = cli(capsys, "merge", path.parent, "--out", tmp_path / "compat.json", "--no-render")
    assert code == 0
    matrix = read_matrix(str(tmp_path / "compat.json"))
    (tmp_path / "newer-matrix.json").write_text(json.dumps(_newer_minor(matrix, "cells")))
    assert read_matrix(str(tmp_path / "newer-matrix.json"))["a_new_optional_field"]
    code, _ = cli(capsys, "diff", tmp_path / "compat.json", tmp_path / "newer-matrix.json")
    assert code == 0
    # our own minor version stays closed: a field it does not define is an error in a file that claims it
    same = _newer_minor(report, "cells")
    same["schema_version"] = report["schema_version"]
    path.write_text(json.dumps(same))
    with pytest.raises(ReportError, match="a_new_optional_field"):
        read_report(str(path))


def test_a_report_of_another_major_version_is_refused(records, tmp_path):
    good, _ = records
    report = write_report(str(tmp_path / "ours.json"), [good], environment=environment())
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**report, "schema_version": "2.0"}))
    with pytest.raises(ReportError, match=r"written with report schema 2\.0; this harness reads 1\.x"):
        read_report(str(path))
    matrix = merge_files([str(tmp_path / "ours.json")], str(tmp_path / "compat.json"), render=False)
    (tmp_path / "m.json").write_text(json.dumps({**matrix, "schema_version": "2.1"}))
    with pytest.raises(MatrixError, match=r"written with matrix schema 2\.1"):
        read_matrix(str(tmp_path / "m.json"))


def test_cases_option_takes_a_case_file(write_case, capsys):
    path = write_case(**CPU_ONLY)
    code, _ = cli(capsys, "validate", "--cases", path)
    assert code == 0
    assert main(["list", "--cases", str(path)]) == 0
    assert capsys.readouterr().out.split() == ["bert_classifier-lora-test[cpu-fp32]"]


def test_the_same_folder_given_twice_is_read_once(write_case, case_dir, capsys):
    write_case(**CPU_ONLY)
    code, _ = cli(capsys, "validate", "--cases", case_dir, "--cases", case_dir, "--cases",
                  case_dir / "bert_classifier-lora-test.toml")
    assert code == 0
    assert main(["list", "--cases", str(case_dir), "--cases", str(case_dir) + os.sep]) == 0
    assert capsys.readouterr().out.split() == ["bert_classifier-lora-test[cpu-fp32]"]
