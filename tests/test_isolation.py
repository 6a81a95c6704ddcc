"""Crash isolation and time limits: real crashes (os._exit, a segfault through ctypes, SIGKILL as the OOM killer
sends it) and a real hang, in the child that runs the cell; the parent records them and goes on."""
from __future__ import annotations

import ctypes
import dataclasses
import getpass
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import harness.running.isolation as iso
from harness import load_case_file
from harness.specs.case import Case
from harness.running.isolation import CellRunner, run_cell_isolated
from harness.running.pool import run_jobs
from harness.reporting.report import read_report


def _segfault(*_):
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def _exit(*_):
    os._exit(7)


def _oom_kill(*_):
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does


def _hang(*_):
    time.sleep(600)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Every temporary folder the harness makes goes here, so a test can check that none is left."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def leftovers(tmp) -> list[str]:
    """What the harness left in `tmp` (torch's compile cache and pytest's basetemp, one per user, are not ours)."""
    return sorted(p for p in os.listdir(tmp) if not p.startswith(("torchinductor_", "pytest-of-")))


@pytest.mark.parametrize("hook, fault, stage, exception", [
    ("after_save", _exit, "save", "exit code 7"),
    ("after_load", _segfault, "load", "SIGSEGV"),
    ("after_save", _oom_kill, "save", "SIGKILL"),
])
def test_a_cell_that_kills_its_process_is_crashed_with_its_stage(write_case, private_tmp, hook, fault, stage,
                                                                 exception):
    record = run_cell_isolated(load_case_file(write_case(devices=["cpu"])), "cpu", "fp32", known_issues=[],
                               **{hook: fault})
    assert record["status"] == "crashed"
    assert record["stage"] == stage
    assert record["exception_type"] == exception
    assert f"stage '{stage}'" in record["message"]
    assert set(record["seconds"]) >= {"build", "adapt", stage}
    if exception == "SIGSEGV":  # faulthandler's stack of the child, in the record rather than on the terminal
        assert "_segfault" in record["traceback"]
    assert leftovers(private_tmp) == []  # the cell folder and its base checkpoint are gone


def test_a_hanging_cell_times_out_with_the_case_limit(write_case, private_tmp):
    case = load_case_file(write_case(devices=["cpu"], timeout_s=3))
    start = time.monotonic()
    record = run_cell_isolated(case, "cpu", "fp32", known_issues=[], timeout_s=500, after_save=_hang)
    elapsed = time.monotonic() - start
    assert record["status"] == "timeout"
    assert record["stage"] == "save"
    assert "time limit of 3 s" in record["message"]
    assert "_hang" in record["traceback"]  # the child's Python stack when it was stopped: where it hung
    assert 3 <= elapsed < 60  # the case's timeout_s wins over the runner default; the child was killed


def test_the_default_limit_applies_without_timeout_s(write_case):
    case = load_case_file(write_case(devices=["cpu"]))
    assert iso.cell_timeout(case) == iso.DEFAULT_TIMEOUT_S
    assert iso.cell_timeout(case, 7) == 7.0
    assert iso.cell_timeout(load_case_file(write_case(timeout_s=2.5))) == 2.5


def test_an_isolated_cell_gives_the_same_record_as_in_process(write_case):
    from harness import run_cell

    case = load_case_file(write_case(devices=["cpu"]))
    plain = run_cell(case, "cpu", "fp32", known_issues=[])
    isolated = run_cell_isolated(case, "cpu", "fp32", known_issues=[])
    assert isolated["status"] == plain["status"] == "pass"
    assert isolated["max_abs_diff"] <= isolated["tolerance"]
    assert "artifact_dir" not in isolated


def _faulty_cases(write_case, monkeypatch):
    """Three cells, (ok, crashy, slow): the worker's round trip segfaults after the crashy cell's load and hangs
    past the slow cell's 3 s limit after its save (real faults in the worker, real libraries)."""
    ok = load_case_file(write_case(id="bert_classifier-lora-ok", devices=["cpu"]))
    crashy = load_case_file(write_case(id="bert_classifier-lora-crashy", devices=["cpu"]))
    slow = load_case_file(write_case(id="bert_classifier-lora-slow", devices=["cpu"], timeout_s=3))
    original = iso.run_roundtrip

    def faulty(case, device, dtype, **kwargs):  # runs in the worker
        if case.id.endswith("crashy"):
            kwargs["after_load"] = _segfault
        if case.id.endswith("slow"):
            kwargs["after_save"] = _hang
        return original(case, device, dtype, **kwargs)

    monkeypatch.setattr(iso, "run_roundtrip", faulty)
    return ok, crashy, slow


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.skipif(
    os.environ.get("PEFT_COMPAT_SLOW") != "1", reason="slow (inductor compiles C++, ~30 s a cell): PEFT_COMPAT_SLOW=1"))])
def test_a_compiled_cell_leaves_the_next_compiled_cell_no_path_into_its_removed_folder(
        write_case, private_tmp, monkeypatch, backend):
    """torch fixes its compile-cache folders from tempfile.gettempdir() once per process: TORCHINDUCTOR_CACHE_DIR
    on the first compile, the precompiled-header folder when torch._inductor.codecache is imported. Where that
    first happens inside a cell (peft 0.7 with transformers 4.36 import torch._dynamo lazily), it is the cell's own
    folder, which the runner removes while the worker runs the next cell: the next compiled cell re-created it, and
    failed with "No such file or directory: <old cell>/tmp" when the removal won the race (the oldest tox env, in
    CI). The cell's process settles them first: every cell passes, and no cell folder outlives the run."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # as in a process that has not compiled yet
    compiled = load_case_file(write_case(id="bert_classifier-lora-compiled", devices=["cpu"], timeout_s=600,
                                         save={"mode": "peft_compiled", "options": {"backend": backend}}))
    runner = CellRunner(known_issues=[])
    try:
        records = [runner.run(compiled, "cpu", "fp32") for _ in range(3 if backend == "eager" else 2)]
    finally:
        runner.close()
    assert [(r["status"], r["message"]) for r in records] == [("pass", None)] * len(records)
    assert leftovers(private_tmp) == []
    assert os.path.isdir(private_tmp / f"torchinductor_{getpass.getuser()}")  # torch's default, as for the user


def test_the_worker_is_replaced_after_a_crash_and_a_timeout_and_every_cell_is_recorded(
        write_case, private_tmp, monkeypatch):
    ok, crashy, slow = _faulty_cases(write_case, monkeypatch)
    runner = CellRunner(known_issues=[])
    try:
        statuses, pids = [], []
        for case in (ok, crashy, ok, slow, ok):
            record = runner.run(case, "cpu", "fp32")
            statuses.append((record["status"], record["stage"]))
            pids.append(runner._worker.pid if runner._worker else None)
    finally:
        runner.close()
    assert statuses == [("pass", None), ("crashed", "load"), ("pass", None), ("timeout", "save"), ("pass", None)]
    assert pids[1] is None and pids[3] is None  # the dead worker was dropped ...
    assert len({pids[0], pids[2], pids[4]}) == 3  # ... and a new one forked for the next cell
    assert leftovers(private_tmp) == []  # cell folders and base checkpoints are gone


# --- through pytest, with and without pytest-xdist ------------------------------------------------------

CRASHY_CONFTEST = '''
import os
import harness.running.isolation as iso

_original = iso.run_roundtrip


def _run_cell(case, device, dtype, **kwargs):
    if case.id.endswith("-crashy"):
        kwargs["after_save"] = lambda path: os._exit(9)   # a real process death in the middle of the cell
    return _original(case, device, dtype, **kwargs)


iso.run_roundtrip = _run_cell
'''


@pytest.fixture
def crashy_matrix(write_case, case_dir, tmp_path):
    for name in ("a_ok", "b_crashy", "c_ok"):
        write_case(name=name, id=f"bert_classifier-lora-{name.split('_')[1]}" if name != "c_ok"
                   else "bert_classifier-lora-ok2", devices=["cpu"])
    (case_dir / "conftest.py").write_text(CRASHY_CONFTEST)
    (case_dir / "pytest.ini").write_text("[pytest]\n")
    return case_dir


def run_pytest(case_dir, report, *args, env=None):
    cmd = [sys.executable, "-m", "pytest", "-p", "harness.running.plugin", "--cases", str(case_dir), str(case_dir),
           "-p", "no:cacheprovider", "--rootdir", str(case_dir), "-q", "--compat-report", str(report), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=case_dir, env=env, timeout=600)


@pytest.mark.parametrize("args", [[], ["-n", "2"], ["-n", "2", "--isolation", "off"]],
                         ids=["isolated", "isolated-xdist", "xdist-worker-dies"])
def test_pytest_records_the_crashed_cell_and_every_other_cell(crashy_matrix, tmp_path, args):
    report_path = tmp_path / "report.json"
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    result = run_pytest(crashy_matrix, report_path, *args, env=dict(os.environ, TMPDIR=str(tmpdir)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert leftovers(tmpdir) == []  # no cell folder, base checkpoint or stage folder is left behind
    report = read_report(str(report_path))
    cells = {c["cell_id"]: c for c in report["cells"]}
    assert sorted(cells) == ["bert_classifier-lora-crashy[cpu-fp32]", "bert_classifier-lora-ok2[cpu-fp32]",
                             "bert_classifier-lora-ok[cpu-fp32]"]
    crashed = cells["bert_classifier-lora-crashy[cpu-fp32]"]
    assert crashed["status"] == "crashed"
    assert crashed["stage"] == "save"
    assert cells["bert_classifier-lora-ok[cpu-fp32]"]["status"] == "pass"
    assert cells["bert_classifier-lora-ok2[cpu-fp32]"]["status"] == "pass"
    assert report["complete"] is True
    if "off" in args:
        assert crashed["exception_type"] == "WorkerCrashed"  # xdist's crash report, turned into a record
    else:
        assert crashed["exception_type"] == "exit code 9"
    assert json.dumps(report)  # plain JSON


def test_cell_timeout_without_isolation_is_a_usage_error(crashy_matrix, tmp_path):
    result = run_pytest(crashy_matrix, tmp_path / "r.json", "--isolation", "off", "--cell-timeout", "5")
    assert result.returncode == 4
    assert "--cell-timeout needs isolation" in result.stderr
    assert "Traceback" not in result.stderr


# --- a worker that dies between two cells ----------------------------------------------------------------

def _wait_until_dead(pid: int, limit: float = 30.0) -> None:
    """Until `pid` (our child) has exited; it is not reaped: the runner must find out for itself."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not die")


def test_a_worker_that_died_idle_does_not_cost_the_next_cell(write_case, private_tmp):
    """The worker is SIGKILLed (as the OOM killer would) while it waits for its next cell: that cell never ran
    in it, so it runs in a fresh worker and passes; nothing is recorded as crashed."""
    ok = load_case_file(write_case(id="bert_classifier-lora-ok", devices=["cpu"]))
    runner = CellRunner(known_issues=[])
    try:
        assert runner.run(ok, "cpu", "fp32")["status"] == "pass"
        idle = runner._worker.pid
        os.kill(idle, signal.SIGKILL)
        _wait_until_dead(idle)
        record = runner.run(ok, "cpu", "fp32")
        assert (record["status"], record["exception_type"]) == ("pass", None), record["message"]
        assert runner._worker.pid != idle

        # the same, but the worker is stopped (SIGSTOP) before it can read the cell, and killed once the cell
        # has been sent to it: it dies before the cell began, so the cell runs again in a fresh worker
        stopped = runner._worker.pid
        os.kill(stopped, signal.SIGSTOP)
        killer = threading.Timer(1.0, os.kill, (stopped, signal.SIGKILL))
        killer.start()
        try:
            record = runner.run(ok, "cpu", "fp32")
        finally:
            killer.join()
        assert (record["status"], record["exception_type"]) == ("pass", None), record["message"]
        assert runner._worker.pid not in (idle, stopped)
    finally:
        runner.close()
    assert leftovers(private_tmp) == []


class _Unstartable(Case):
    """A case whose worker dies as it unpickles the cell (before the cell begins), in every worker."""

    def __reduce__(self):
        return os._exit, (9,)


def test_a_cell_the_harness_could_not_start_is_not_kept_by_resume(write_case, case_dir, tmp_path, private_tmp):
    from harness.running.checkpoints import ReportCheckpoints
    from harness.running.cli import main

    write_case(name="a", id="bert_classifier-lora-a", devices=["cpu"])
    path_b = write_case(name="b", id="bert_classifier-lora-b", devices=["cpu"])
    out = tmp_path / "report.json"
    assert main(["run", "--cases", str(case_dir), "--out", str(out), "-q"]) == 0
    first = {c["cell_id"]: c for c in read_report(str(out))["cells"]}

    case_b = load_case_file(path_b)
    unstartable = _Unstartable(**{f.name: getattr(case_b, f.name) for f in dataclasses.fields(Case)})
    runner = CellRunner(known_issues=[])
    try:
        record = runner.run(unstartable, "cpu", "fp32")
    finally:
        runner.close()
    # two workers died before the cell began: the record says the harness could not start it
    assert record["status"] == "crashed" and record["exception_type"] == iso.NOT_STARTED
    assert record["stage"] is None and "could not start" in record["message"]
    assert "exit code 9" in record["message"]

    crashed = dict(first["bert_classifier-lora-a[cpu-fp32]"], status="crashed", stage="save",
                   exception_type="exit code 9", message="planted: a real crash of the cell is kept")
    checkpoints = ReportCheckpoints(str(out), {r["cell_id"]: r for r in (crashed, record)})
    checkpoints.write(complete=True)
    assert main(["run", "--cases", str(case_dir), "--out", str(out), "-q", "--resume"]) == 1  # the kept crash
    cells = {c["cell_id"]: c for c in read_report(str(out))["cells"]}
    assert cells["bert_classifier-lora-a[cpu-fp32]"]["message"] == crashed["message"]  # kept, not rerun
    assert cells["bert_classifier-lora-b[cpu-fp32]"]["status"] == "pass"  # never started: run again


# --- several workers at once (run / read --workers N) ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Job:
    case: object
    device: str = "cpu"
    dtype: str = "fp32"
    read: str | None = None


def test_two_workers_isolate_crashes_timeouts_and_unstartable_cells_and_record_every_cell(
        write_case, private_tmp, monkeypatch):
    """The pool of `run --workers 2`: a segfault, a hang past the case's limit and a cell no worker can start
    each cost only their own cell, with the verdict one worker gives; every other cell passes with the record
    one worker gives it; nothing is left behind."""
    ok, crashy, slow = _faulty_cases(write_case, monkeypatch)
    never = load_case_file(write_case(id="bert_classifier-lora-never", devices=["cpu"]))
    unstartable = _Unstartable(**{f.name: getattr(never, f.name) for f in dataclasses.fields(Case)})
    jobs = [_Job(c) for c in (ok, crashy, slow, ok, unstartable, ok, crashy, ok)]
    runner = CellRunner(known_issues=[])
    started = []
    try:
        results = list(run_jobs(runner, jobs, workers=2, on_start=started.append))
        one = runner.run(ok, "cpu", "fp32")  # the same cell in one worker
    finally:
        runner.close()
    assert sorted(map(id, started)) == sorted(map(id, jobs))
    assert sorted(id(job) for job, _ in results) == sorted(map(id, jobs))
    verdicts = sorted((job.case.id, r["status"], r["stage"], r["exception_type"]) for job, r in results)
    assert verdicts == sorted([("bert_classifier-lora-ok", "pass", None, None)] * 4 + [
        ("bert_classifier-lora-crashy", "crashed", "load", "SIGSEGV")] * 2 + [
        ("bert_classifier-lora-slow", "timeout", "save", "Timeout"),
        ("bert_classifier-lora-never", "crashed", None, iso.NOT_STARTED)])
    for job, record in results:
        if record["status"] == "pass":
            assert (record["max_abs_diff"], record["adapter_effect"]) == (one["max_abs_diff"], one["adapter_effect"])
        if record["exception_type"] == iso.NOT_STARTED:
            assert "could not start" in record["message"] and "exit code 9" in record["message"]
    assert leftovers(private_tmp) == []
