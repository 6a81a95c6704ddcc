"""Determinism: reruns of the same cells give the same verdict and max diff; a cell that varies is reported."""
from __future__ import annotations

import json
import os

from harness import load_case_file
from harness.running.cli import main
from harness.running.determinism import rerun_in_process, unstable_cells


def test_unstable_cells_reports_a_changed_max_diff_or_verdict():
    a = {"c1": {"status": "pass", "stage": None, "exception_type": None, "max_abs_diff": 0.0},
         "c2": {"status": "pass", "stage": None, "exception_type": None, "max_abs_diff": 1e-7}}
    b = {"c1": dict(a["c1"]), "c2": dict(a["c2"], max_abs_diff=2e-7)}
    c = {"c1": dict(a["c1"], status="fail", stage="compare")}
    assert unstable_cells([a, a]) == []
    assert [u["cell_id"] for u in unstable_cells([a, b])] == ["c2"]
    flaky = unstable_cells([a, b, c])
    assert [u["cell_id"] for u in flaky] == ["c1", "c2"]
    assert {"missing": True, "count": 1} in flaky[1]["variants"]


def test_a_really_nondeterministic_cell_is_caught(write_case):
    case = load_case_file(write_case(devices=["cpu"]))

    def noise(model):  # a weight nudged from the OS entropy pool: a different max diff on every run
        import torch

        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        with torch.no_grad():
            p = next(p for n, p in model.named_parameters() if "lora_B" in n)
            p.add_(torch.rand(p.shape, generator=gen) * 1e-6)

    runs = rerun_in_process([(case, "cpu", "fp32")], 3, known_issues=[], hooks={"after_load": noise})
    assert [u["cell_id"] for u in unstable_cells(runs)] == ["bert_classifier-lora-test[cpu-fp32]"]


def test_the_rerun_command_finds_the_shipped_cells_stable(write_case, case_dir, tmp_path, capsys):
    write_case(id="bert_classifier-lora-a", devices=["cpu"], dtypes=["fp32", "bf16"])
    write_case(id="bert_classifier-lora-b", devices=["cpu"], save={"mode": "peft_pickle"})
    out = tmp_path / "rerun.json"
    assert main(["rerun", "--cases", str(case_dir), "-n", "3", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["repetitions"] == 3 and summary["cells"] == 3 and summary["unstable"] == []
    assert "3 cells x 3 repetitions" in capsys.readouterr().out
