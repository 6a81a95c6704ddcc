"""Nothing the harness loads executes code: a planted pickle whose __reduce__ writes a file, put where the real
load path reads (adapter_model.bin, state_dict.pt), must not run. And the harness source never unpickles a file."""
from __future__ import annotations

import ast
import os
import pathlib

import pytest
import torch

from harness import load_case_file, run_cell

HARNESS = pathlib.Path(__file__).resolve().parents[1] / "harness"


class Planted:
    """Unpickling this calls exec(code): it writes the marker file. Only an unsafe loader gets there."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def plant(path, marker):
    torch.save({"base_model.model.classifier.weight": Planted(marker)}, path)


@pytest.mark.parametrize("case, filename", [
    ({"save": {"mode": "peft_pickle"}, "load": {"mode": "peft_from_pretrained"}}, "adapter_model.bin"),
    ({"save": {"mode": "peft_pickle"}, "load": {"mode": "peft_load_adapter"}}, "adapter_model.bin"),
    ({"save": {"mode": "torch_state_dict"}, "load": {"mode": "state_dict_into_peft"}}, "state_dict.pt"),
])
def test_a_planted_pickle_does_not_execute(write_case, tmp_path, case, filename):
    marker = tmp_path / "marker"

    def after_save(artifact):
        target = os.path.join(artifact, filename)
        assert os.path.exists(target)  # the real load path reads exactly this file
        plant(target, marker)

    record = run_cell(load_case_file(write_case(devices=["cpu"], **case)), "cpu", "fp32", known_issues=[],
                      after_save=after_save)
    assert not marker.exists(), "the planted pickle executed code"
    assert record["status"] == "error" and record["stage"] == "load"
    assert "weights_only" in record["message"] or "Unpickl" in (record["exception_type"] or "")


def test_the_planted_pickle_is_real(tmp_path):
    """The fault is not a dud: an unsafe load of the same file does run the code."""
    marker, path = tmp_path / "marker", tmp_path / "x.pt"
    plant(path, marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    else getattr(func, "id", None) or getattr(func, "attr", None))
            yield name, node


def test_the_harness_source_loads_files_only_safely():
    """Every torch.load passes weights_only=True; nothing unpickles a file (the one pickle.loads reads the task
    pipe between the runner and its own forked worker, never a file)."""
    torch_loads, pickles = [], []
    for path in sorted(HARNESS.rglob("*.py")):
        for name, node in _calls(ast.parse(path.read_text())):
            if name == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                torch_loads.append((path.name, node.lineno, ok))
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
                pickles.append((path.name, name))
    assert torch_loads and all(ok for _, _, ok in torch_loads), torch_loads
    assert pickles == [("isolation.py", "pickle.loads")], pickles


def test_the_generated_repro_loads_only_safely(write_case):
    from harness.running.repro import repro_script

    case = load_case_file(write_case(save={"mode": "torch_state_dict"}, load={"mode": "state_dict_into_peft"}))
    text = repro_script(case, {"cell_id": "x", "status": "fail", "device": "cpu", "dtype": "fp32", "tolerance": 1e-5})
    loads = [node for name, node in _calls(ast.parse(text)) if name == "torch.load"]
    assert loads and all(any(k.arg == "weights_only" and k.value.value is True for k in n.keywords) for n in loads)
