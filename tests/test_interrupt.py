"""Interrupted runs (SIGTERM from a CI timeout, Ctrl-C) leave a valid, incomplete report; --resume completes it
without duplicating a cell. The run is stopped from outside, for real, while a cell hangs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.roundtrip.environment import environment
from harness.running.cli import main
from harness.reporting.report import ReportError, read_report

# Runs `python -m harness run` with one cell made to hang (a real sleep in the cell's process).
DRIVER = '''
import sys, time
import harness.running.isolation as iso

_original = iso.run_roundtrip


def _run_cell(case, device, dtype, **kwargs):
    if case.id.endswith("-slow"):
        kwargs["after_save"] = lambda path: time.sleep(600)
    return _original(case, device, dtype, **kwargs)


iso.run_roundtrip = _run_cell
from harness.running.cli import main
sys.exit(main(sys.argv[1:]))
'''

PYTEST_CONFTEST = DRIVER.split("from harness.running.cli")[0]

IDS = ["bert_classifier-lora-a[cpu-fp32]", "bert_classifier-lora-b-slow[cpu-fp32]", "bert_classifier-lora-c[cpu-fp32]"]


@pytest.fixture
def three_cells(write_case, case_dir):
    write_case(name="a", id="bert_classifier-lora-a", devices=["cpu"])
    write_case(name="b", id="bert_classifier-lora-b-slow", devices=["cpu"])
    write_case(name="c", id="bert_classifier-lora-c", devices=["cpu"])
    return case_dir


def wait_for_cells(path, n: int, proc, limit: float = 240.0) -> dict:
    """Poll the report that the run keeps rewriting until it holds n cells."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if os.path.exists(path):
            report = read_report(str(path))  # never a truncated file: every read is a valid report
            if len(report["cells"]) >= n:
                return report
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the report never held {n} cells")


@pytest.mark.parametrize("sig, code, reason, workers", [(signal.SIGTERM, 143, "SIGTERM", "1"),
                                                       (signal.SIGINT, 130, "SIGINT", "1"),
                                                       (signal.SIGTERM, 143, "SIGTERM", "2")])
def test_an_interrupted_run_leaves_a_valid_incomplete_report_and_resume_completes_it(
        three_cells, tmp_path, sig, code, reason, workers):
    out = tmp_path / "report.json"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), "run", "--cases", str(three_cells), "--out", str(out), "-q",
                             "--workers", workers], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = wait_for_cells(out, 1, proc)
    assert running["complete"] is False  # a checkpoint written while the run goes on
    time.sleep(1.0 if workers == "1" else 3.0)  # the second cell is now hanging in its process
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    report = read_report(str(out))
    assert report["complete"] is False
    assert reason in report["incomplete_reason"]
    if workers == "1":
        assert [c["cell_id"] for c in report["cells"]] == IDS[:1]
    else:  # the other worker went on with the third cell while the second hung: the hanging cell is not recorded
        assert [c["cell_id"] for c in report["cells"]] in (IDS[:1], [IDS[0], IDS[2]])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # no half-written temporary report

    # --resume keeps the recorded cell, runs the two others (no hang this time), and duplicates nothing
    first = report["cells"][0]
    assert main(["run", "--cases", str(three_cells), "--out", str(out), "-q", "--resume"]) == 0
    resumed = read_report(str(out))
    assert [c["cell_id"] for c in resumed["cells"]] == IDS
    assert resumed["complete"] is True and resumed["incomplete_reason"] is None
    assert resumed["cells"][0]["seconds"] == first["seconds"]  # kept, not re-run

    # without --resume the report is replaced, again with every cell exactly once
    assert main(["run", "--cases", str(three_cells), "--out", str(out), "-q"]) == 0
    assert [c["cell_id"] for c in read_report(str(out))["cells"]] == IDS


def test_resume_refuses_a_report_of_other_versions(three_cells, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["run", "--cases", str(three_cells), "--out", str(out), "-q", "-k", "lora-a"]) == 0
    data = json.loads(out.read_text())
    data["environment"]["peft"] = "0.0.1"
    out.write_text(json.dumps(data))
    assert main(["run", "--cases", str(three_cells), "--out", str(out), "-q", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "peft 0.0.1" in err and str(out) in err


def test_a_pytest_run_stopped_by_sigterm_writes_an_incomplete_report(three_cells, tmp_path):
    (three_cells / "conftest.py").write_text(PYTEST_CONFTEST)
    (three_cells / "pytest.ini").write_text("[pytest]\n")
    out = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "harness.running.plugin", "--cases", str(three_cells), str(three_cells),
         "-p", "no:cacheprovider", "--rootdir", str(three_cells), "-q", "--compat-report", str(out)],
        cwd=three_cells, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_cells(out, 1, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, stdout  # pytest's "interrupted"
    report = read_report(str(out))
    assert report["complete"] is False
    assert [c["cell_id"] for c in report["cells"]] == IDS[:1]


def test_a_report_is_written_atomically(tmp_path):
    """A write that fails half-way leaves the old report: the new one goes to a temporary file, then a rename."""
    from harness.reporting.report import write_json_atomic, write_report

    out = tmp_path / "r.json"
    write_report(str(out), [], complete=True, environment=environment())
    before = out.read_text()
    with pytest.raises(TypeError):
        write_json_atomic(str(out), {"cells": [object()]})  # json.dump fails in the middle of the document
    assert out.read_text() == before
    assert os.listdir(tmp_path) == ["r.json"]
    out.write_text(before[: len(before) // 2])  # what a non-atomic writer would leave
    with pytest.raises(ReportError, match="not JSON"):
        read_report(str(out))


def _keep_signalling(proc, sig, every: float = 0.02, limit: float = 120.0):
    """Send `sig` again and again until the process exits (an impatient user, a CI runner's shutdown): the
    later signals land wherever the run is in its shutdown. Returns (stdout, stderr)."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            break
        time.sleep(every)
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run did not exit while being signalled:\n{out}\n{err}") from None


@pytest.mark.parametrize("sig, code, reason", [(signal.SIGINT, 130, "interrupted (SIGINT)"),
                                               (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_signals_during_the_shutdown_of_a_run_exit_quietly_with_a_valid_report(three_cells, tmp_path, sig, code,
                                                                               reason):
    """Ctrl-C pressed again and again (or SIGTERM repeated) while `harness run` stops: no traceback, the
    interrupt's exit status, and the final report (not the last checkpoint) on disk."""
    out = tmp_path / "report.json"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), "run", "--cases", str(three_cells), "--out", str(out), "-q",
                             "--table", "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_cells(out, 1, proc)
    time.sleep(1.0)  # the second cell hangs in its process
    _, stderr = _keep_signalling(proc, sig)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    report = read_report(str(out))
    assert report["complete"] is False
    assert report["incomplete_reason"].startswith(reason), report["incomplete_reason"]  # the final write
    assert [c["cell_id"] for c in report["cells"]] == IDS[:1]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-") or p.endswith(".lock")]


def test_sigterm_while_xdist_stops_its_workers_keeps_the_final_report(three_cells, tmp_path):
    """SIGTERM, then SIGTERM again while pytest-xdist tears its workers down (one of them is stuck in a hanging
    cell, so the teardown takes seconds): the final report is written anyway, and no traceback."""
    (three_cells / "conftest.py").write_text(PYTEST_CONFTEST)
    (three_cells / "pytest.ini").write_text("[pytest]\n")
    out = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "harness.running.plugin", "--cases", str(three_cells), str(three_cells),
         "-p", "no:cacheprovider", "--rootdir", str(three_cells), "-q", "-n", "2", "--compat-report", str(out)],
        cwd=three_cells, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_cells(out, 1, proc)
    time.sleep(1.0)  # b hangs in its worker (xdist sends the three cells round robin: a and c to gw0, b to gw1)
    stdout, stderr = _keep_signalling(proc, signal.SIGTERM, every=0.2)
    assert proc.returncode == 2, stdout + stderr  # pytest's "interrupted"
    assert "Traceback" not in stdout + stderr, stdout + stderr
    report = read_report(str(out))
    assert report["complete"] is False
    # the final write, not the last checkpoint ("in progress ...")
    assert report["incomplete_reason"].startswith("terminated (SIGTERM): "), report["incomplete_reason"]
    assert IDS[1] in report["incomplete_reason"]
    cells = [c["cell_id"] for c in report["cells"]]
    assert IDS[0] in cells and IDS[1] not in cells
