"""Two runs that write the same report at once: the second is refused (exit 2, one line naming the first run's
lock) and the first run's cells are all there. Real processes, started for real at the same time; the first
one's middle cell waits in its process until the test lets it go, so the two runs surely overlap."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from harness.reporting.report import read_report

# `python -m harness run`, with the round trip of a "-gated" cell waiting (in the cell's process, after its save)
# until the file named by PEFT_COMPAT_TEST_GATE exists.
DRIVER = '''
import os, sys, time
import harness.running.isolation as iso

_original = iso.run_roundtrip


def _wait_for_gate(path):
    while not os.path.exists(os.environ["PEFT_COMPAT_TEST_GATE"]):
        time.sleep(0.05)


def _run_cell(case, device, dtype, **kwargs):
    if case.id.endswith("-gated"):
        kwargs["after_save"] = _wait_for_gate
    return _original(case, device, dtype, **kwargs)


iso.run_roundtrip = _run_cell
from harness.running.cli import main
sys.exit(main(sys.argv[1:]))
'''

IDS = ["bert_classifier-lora-a[cpu-fp32]", "bert_classifier-lora-b-gated[cpu-fp32]", "bert_classifier-lora-c[cpu-fp32]"]


@pytest.fixture
def gated_cells(write_case, case_dir):
    write_case(name="a", id="bert_classifier-lora-a", devices=["cpu"])
    write_case(name="b", id="bert_classifier-lora-b-gated", devices=["cpu"])
    write_case(name="c", id="bert_classifier-lora-c", devices=["cpu"])
    return case_dir


def _wait_for_cells(path, n, proc, limit=240.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if os.path.exists(path) and len(read_report(str(path))["cells"]) >= n:
            return
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the first run never recorded {n} cell(s)")


def test_a_second_run_on_the_same_report_is_refused_and_loses_nothing(gated_cells, tmp_path):
    out = tmp_path / "reports" / "local.json"
    gate = tmp_path / "gate"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, PEFT_COMPAT_TEST_GATE=str(gate))
    run = [sys.executable, str(driver), "run", "--cases", str(gated_cells), "--out", str(out), "-q"]
    first = subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_cells(out, 1, first)  # the first run is in its second cell, which waits for the gate
        # the second run, with a cell of its own; it starts while the first holds the report
        second = subprocess.run([*run, "-k", "lora-c"], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
        assert f"{out}.lock" in lines[0] and f"pid {first.pid}" in lines[0]
        assert "Traceback" not in second.stderr

        # a pytest run that would write the same report is refused the same way (pytest's usage error)
        plugin = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "harness.running.plugin", "--cases", str(gated_cells),
             str(gated_cells), "-p", "no:cacheprovider", "--rootdir", str(gated_cells), "-q", "-k", "lora-c",
             "--compat-report", str(out)], cwd=gated_cells, env=env, capture_output=True, text=True, timeout=300)
        assert plugin.returncode == 4, plugin.stdout + plugin.stderr
        assert f"{out}.lock" in plugin.stderr and f"pid {first.pid}" in plugin.stderr
        assert first.poll() is None  # neither of them disturbed the first run
    finally:
        gate.write_text("go")
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    report = read_report(str(out))
    assert [c["cell_id"] for c in report["cells"]] == IDS  # every cell of the first run: nothing was lost
    assert report["complete"] is True
    assert sorted(os.listdir(out.parent)) == ["local.json"]  # the lock file leaves with its run

    # the lock is gone with its run: the next run on the same report goes ahead
    again = subprocess.run([*run, "-k", "lora-a"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert [c["cell_id"] for c in read_report(str(out))["cells"]] == IDS[:1]
