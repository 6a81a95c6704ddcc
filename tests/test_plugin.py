"""The pytest layer: ids, -k and markers, readable failures, xdist-safe report with every cell exactly once."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.reporting.report import read_report


@pytest.fixture
def small_matrix(write_case, case_dir, tmp_path):
    write_case(id="bert_classifier-lora-ok", dtypes=["fp32", "bf16"])
    write_case(id="bert_classifier-lora-vacuous", tags=["demo"],
               adapter={"type": "LoraConfig", "init": "config", "kwargs": {"r": 4, "target_modules": ["query"]}})
    write_case(id="bert_classifier-lora-known", adapter={"type": "LoraConfig", "kwargs": {"r": 4, "target_modules": ["nope"]}})
    write_case(id="bert_classifier-lora-newer", requires={"peft": ">=999"})
    known = tmp_path / "known.toml"
    known.write_text('[[issue]]\ncases = ["*-known"]\nstage = "adapt"\nreference = "https://example.invalid/1"\n')
    return case_dir, known


def pytest_run(case_dir, known, *args):
    cmd = [sys.executable, "-m", "pytest", "-p", "harness.running.plugin", "--cases", str(case_dir), str(case_dir),
           "--known-issues", str(known), "-p", "no:cacheprovider", "--rootdir", str(case_dir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=case_dir)


def test_xdist_report_has_every_cell_exactly_once(small_matrix, tmp_path):
    case_dir, known = small_matrix
    out = tmp_path / "report.json"
    result = pytest_run(case_dir, known, "-n", "2", "--compat-report", str(out), "-q")
    assert result.returncode == 1, result.stdout  # the vacuous case fails the run
    report = read_report(str(out))
    ids = [c["cell_id"] for c in report["cells"]]
    expected = {f"bert_classifier-lora-{n}[{d}-{t}]" for n, dts in
                [("ok", ["fp32", "bf16"]), ("vacuous", ["fp32"]), ("known", ["fp32"]), ("newer", ["fp32"])]
                for d in ("cpu", "cuda", "cuda_to_cpu") for t in dts}
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == expected
    status = {c["cell_id"]: c["status"] for c in report["cells"]}
    assert status["bert_classifier-lora-ok[cpu-bf16]"] == "pass"
    assert status["bert_classifier-lora-vacuous[cpu-fp32]"] == "fail"
    assert status["bert_classifier-lora-known[cpu-fp32]"] == "expected-failure"
    assert status["bert_classifier-lora-newer[cpu-fp32]"] == "not-applicable"
    assert status["bert_classifier-lora-ok[cuda-fp32]"] == "skipped"
    assert report["complete"] is True


def test_failure_message_names_case_stage_and_versions(small_matrix):
    case_dir, known = small_matrix
    result = pytest_run(case_dir, known, "-k", "vacuous and cpu-fp32")
    assert result.returncode == 1
    out = result.stdout
    assert "bert_classifier-lora-vacuous[cpu-fp32]: FAIL at stage 'adapt'" in out
    assert "vacuous: the adapter changes the logits" in out
    assert "versions: peft " in out and "transformers " in out and "torch " in out
    assert "1 failed" in out and "deselected" in out


def test_markers_and_k_select_cells(small_matrix):
    case_dir, known = small_matrix
    result = pytest_run(case_dir, known, "-m", "demo and not cuda", "--collect-only", "-q")
    lines = [l for l in result.stdout.splitlines() if "::" in l]
    assert [l.split("::")[1] for l in lines] == ["bert_classifier-lora-vacuous[cpu-fp32]"]
    assert lines[0].split("::")[0].endswith("bert_classifier-lora-vacuous.toml")
    result = pytest_run(case_dir, known, "-k", "ok and bf16", "--collect-only", "-q")
    assert sorted(l.split("::")[1] for l in result.stdout.splitlines() if "::" in l) == [
        "bert_classifier-lora-ok[cpu-bf16]", "bert_classifier-lora-ok[cuda-bf16]", "bert_classifier-lora-ok[cuda_to_cpu-bf16]"]


def test_known_issue_that_passes_fails_the_run_loudly(write_case, case_dir, tmp_path):
    write_case(id="bert_classifier-lora-ok")
    known = tmp_path / "known.toml"
    known.write_text('[[issue]]\ncases = ["*-ok"]\nstage = "save"\nreference = "https://example.invalid/2"\n')
    result = pytest_run(case_dir, known, "-m", "not cuda")
    assert result.returncode == 1
    assert "FIXED (known issue no longer fails): bert_classifier-lora-ok[cpu-fp32]" in result.stdout
    assert "KNOWN ISSUE NO LONGER FAILS" in result.stdout


def test_cli_run_writes_the_same_cells(small_matrix, tmp_path):
    case_dir, known = small_matrix
    out = tmp_path / "cli.json"
    result = subprocess.run([sys.executable, "-m", "harness", "run", "-q", "--cases", str(case_dir),
                             "--known-issues", str(known), "--device", "cpu", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stderr  # vacuous case: red
    report = json.loads(out.read_text())
    assert report["summary"] == {"pass": 2, "fail": 1, "expected-failure": 1, "not-applicable": 1}
    assert "5 cells ->" in result.stderr


def test_full_set_cells_are_collected_only_with_full(write_case, case_dir, tmp_path):
    write_case(id="bert_classifier-lora-ok", full_dtypes=["bf16"])
    known = tmp_path / "known.toml"
    known.write_text("")
    fast = pytest_run(case_dir, known, "--collect-only", "-q", "-m", "not cuda")
    assert [l.split("::")[1] for l in fast.stdout.splitlines() if "::" in l] == ["bert_classifier-lora-ok[cpu-fp32]"]
    full = pytest_run(case_dir, known, "--collect-only", "-q", "-m", "full and not cuda", "--full")
    assert [l.split("::")[1] for l in full.stdout.splitlines() if "::" in l] == ["bert_classifier-lora-ok[cpu-bf16]"]


VACUOUS = {"type": "LoraConfig", "init": "config", "kwargs": {"r": 4, "target_modules": ["query"]}}


@pytest.mark.parametrize("args", [["-x"], ["--maxfail", "1", "-n", "2"]], ids=["x", "maxfail-xdist"])
def test_a_run_stopped_early_writes_an_incomplete_report(write_case, case_dir, tmp_path, args):
    """-x / --maxfail stop the run with cells not run: the report must not say complete, and says why."""
    write_case(name="a", id="bert_classifier-lora-a-vacuous", devices=["cpu"], adapter=VACUOUS)
    for name in "bcdef":
        write_case(name=name, id=f"bert_classifier-lora-{name}", devices=["cpu"], dtypes=["fp32", "bf16"])
    known = tmp_path / "known.toml"
    known.write_text("")
    out = tmp_path / "report.json"
    result = pytest_run(case_dir, known, "--compat-report", str(out), "-q", "-k", "not lora-f", *args)
    assert result.returncode in (1, 2), result.stdout + result.stderr  # failed (-x) / interrupted (xdist)
    report = read_report(str(out))
    recorded = {c["cell_id"] for c in report["cells"]}
    assert "bert_classifier-lora-a-vacuous[cpu-fp32]" in recorded
    selected = 1 + 4 * 2  # the vacuous cell and 4 cases x 2 dtypes; lora-f is deselected, not missing
    assert len(recorded) < selected
    assert report["complete"] is False
    reason = report["incomplete_reason"]
    assert "stopping after 1 failures" in reason
    assert f"{selected - len(recorded)} of {selected} selected cells have no record" in reason, reason
    assert "lora-f" not in reason


def test_a_run_with_deselected_cells_is_complete(write_case, case_dir, tmp_path):
    write_case(name="b", id="bert_classifier-lora-b", devices=["cpu"])
    write_case(name="f", id="bert_classifier-lora-f", devices=["cpu"])
    known = tmp_path / "known.toml"
    known.write_text("")
    out = tmp_path / "report.json"
    result = pytest_run(case_dir, known, "--compat-report", str(out), "-q", "-k", "not lora-f")
    assert result.returncode == 0, result.stdout
    report = read_report(str(out))
    assert [c["cell_id"] for c in report["cells"]] == ["bert_classifier-lora-b[cpu-fp32]"]
    assert report["complete"] is True and report["incomplete_reason"] is None
