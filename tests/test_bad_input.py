"""Bad input gets one clear error naming the file and the reason, never a traceback: case files, options,
report files, checkpoints that are truncated or lack adapter_config.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.roundtrip.environment import environment
from harness import load_case_file
from harness.running.cli import main
from harness.running.isolation import run_cell_isolated
from harness.reporting.report import ReportError, read_report, write_report


def cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


@pytest.mark.parametrize("changes, field, words", [
    ({"family": "gpt9"}, "family", "unknown model family 'gpt9'"),
    ({"adapter": {"type": "LoraConfigg"}}, "adapter.type", "unknown adapter type 'LoraConfigg'"),
    ({"save": {"mode": "peft_zip"}}, "save.mode", "unknown save mode 'peft_zip'"),
    ({"load": {"mode": "state_dict_into_base"}}, "load.mode", "reads a state_dict_file"),  # save/load do not fit
    ({"requires": {"peft": ">=2,<1"}}, "requires.peft", "can never be met"),
    ({"colour": "red"}, "colour", "unknown field 'colour'"),
])
def test_a_bad_case_file_is_one_clear_error(write_case, case_dir, capsys, changes, field, words):
    path = write_case(**changes)
    for command in ("validate", "run", "list"):
        code, err = cli(capsys, command, "--cases", str(case_dir))
        assert code == 2
        assert err.startswith("error: ") and str(path) in err and f"field '{field}'" in err and words in err


def test_a_case_file_that_is_not_toml(case_dir, capsys):
    path = case_dir / "broken.toml"
    path.write_text('id = "x\nfamily = \n')
    code, err = cli(capsys, "validate", "--cases", str(case_dir))
    assert code == 2 and str(path) in err and "not valid TOML" in err


def test_pytest_collection_of_a_bad_case_is_a_usage_error_without_traceback(write_case, case_dir):
    path = write_case(family="gpt9")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "harness.running.plugin", "--cases", str(case_dir),
                             str(case_dir), "-p", "no:cacheprovider", "--rootdir", str(case_dir), "-q"],
                            capture_output=True, text=True, cwd=case_dir, timeout=300)
    assert result.returncode == 4  # pytest's usage error
    assert f"peft-compat: {path}: field 'family'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("argv, words", [
    (["--isolation", "off", "--timeout", "5"], "--timeout needs an isolated run"),
    (["--timeout", "0"], "must be more than 0 seconds"),
    (["--keep-failed", "{file}"], "exists and is not a folder"),
])
def test_conflicting_options_are_refused(write_case, case_dir, tmp_path, capsys, argv, words):
    write_case()
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = [a.replace("{file}", str(afile)) for a in argv]
    code, err = cli(capsys, "run", "--cases", str(case_dir), "--out", str(tmp_path / "r.json"), *argv)
    assert code == 2 and words in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("content, words", [
    ("{not json", "not JSON"),
    ("[1, 2]", "top level is not an object"),
    (json.dumps({"kind": "peft-compat-report"}), "does not match the report schema"),
])
def test_a_report_that_is_not_json_or_fails_the_schema(tmp_path, capsys, write_case, case_dir, content, words):
    path = tmp_path / "old.json"
    path.write_text(content)
    with pytest.raises(ReportError) as info:
        read_report(str(path))
    assert str(path) in str(info.value) and words in str(info.value)
    write_case()  # the CLI path that reads a report: run --resume
    code, err = cli(capsys, "run", "--cases", str(case_dir), "--out", str(path), "--resume", "-q")
    assert code == 2 and str(path) in err and words in err
    assert path.read_text() == content  # left as it was


def test_a_report_with_a_bad_cell_fails_the_schema_with_the_place(tmp_path):
    path = tmp_path / "r.json"
    write_report(str(path), [], complete=True, environment=environment())
    data = json.loads(path.read_text())
    data["cells"] = [{"cell_id": "x", "status": "great"}]
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"at cells/0"):
        read_report(str(path))


def _truncate(artifact):
    path = os.path.join(artifact, "adapter_model.safetensors")
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[:100])


def _garble(artifact):
    path = os.path.join(artifact, "adapter_model.safetensors")
    data = bytearray(open(path, "rb").read())
    data[8:40] = b"\xff" * 32  # the JSON header is no longer JSON
    with open(path, "wb") as fh:
        fh.write(bytes(data))


def _drop_config(artifact):
    os.remove(os.path.join(artifact, "adapter_config.json"))


@pytest.mark.parametrize("fault, words", [
    (_truncate, "is truncated or corrupted"),
    (_garble, "is truncated or corrupted"),
    (_drop_config, "has no adapter_config.json"),
])
def test_a_broken_checkpoint_is_a_clear_error_at_load(write_case, fault, words):
    record = run_cell_isolated(load_case_file(write_case(devices=["cpu"])), "cpu", "fp32", known_issues=[],
                               after_save=fault)
    assert record["status"] == "error"
    assert record["stage"] == "load"
    assert record["exception_type"] == "harness.roundtrip.modes.CheckpointError"
    assert words in record["message"] and "artifact" in record["message"]  # names the file or folder


@pytest.mark.parametrize("table", ["known_issues", "uncovered"])
def test_a_spec_table_that_cannot_be_read_is_one_error_naming_the_file(tmp_path, table):
    """--known-issues and the uncovered-methods table: a missing file, one that is not UTF-8 and one that is not
    TOML each give the table's own error (one line for the CLI), never a traceback."""
    from harness.specs.known_issues import KnownIssuesError, load_known_issues
    from harness.specs.uncovered import UncoveredError, load_uncovered

    load, error = {"known_issues": (load_known_issues, KnownIssuesError),
                   "uncovered": (load_uncovered, UncoveredError)}[table]
    with pytest.raises(error, match=r"nope\.toml: cannot read the"):
        load(tmp_path / "nope.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"x = '\xe9'\n")
    with pytest.raises(error, match=r"latin\.toml: not valid UTF-8 \(byte 5\)"):
        load(latin)
    bad = tmp_path / "bad.toml"
    bad.write_text("[x\n")
    with pytest.raises(error, match=r"bad\.toml: not valid TOML"):
        load(bad)
