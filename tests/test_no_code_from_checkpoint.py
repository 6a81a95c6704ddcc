"""Nothing the harness loads executes code: a planted pickle whose __reduce__ writes a file, put where the real
load path reads (adapter_model.bin, state_dict.pt), must not run. And the harness source never unpickles a file."""
from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

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


def test_the_planted_pickle_is_real(tmp_path, monkeypatch):
    """The fault is not a dud: an unsafe load of the same file does run the code (once the harness's own
    TORCH_FORCE_WEIGHTS_ONLY_LOAD is out of the way)."""
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    marker, path = tmp_path / "marker", tmp_path / "x.pt"
    plant(path, marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


# What peft <= 0.12 does when it loads adapter_model.bin: torch.load without weights_only, so that the
# caller's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns it into a full unpickling. In this process and in a forked
# child (a cell worker), after importing the harness as every front does.
UNSAFE_CALLER = """
import os, sys
{import_harness}
import torch

path = sys.argv[1]


def load_like_old_peft():
    try:
        torch.load(path, map_location="cpu")
        print("loaded")
    except Exception as exc:
        print(type(exc).__name__)
    sys.stdout.flush()


load_like_old_peft()
pid = os.fork()
if pid == 0:
    load_like_old_peft()
    os._exit(0)
os.waitpid(pid, 0)
"""


def _load_in_a_fresh_process(path, import_harness: bool):
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    env.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)  # set in this test process by its own import of harness
    code = UNSAFE_CALLER.format(import_harness="import harness" if import_harness else "")
    return subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_callers_environment_cannot_turn_weights_only_off(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "adapter_model.bin"
    plant(path, marker)
    result = _load_in_a_fresh_process(path, import_harness=True)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "the planted pickle executed code"
    assert result.stdout.split() == ["UnpicklingError", "UnpicklingError"], result.stdout + result.stderr


def test_without_the_harness_that_environment_does_run_the_code(tmp_path):
    """The fault is not a dud: the same caller without the harness imported does run the planted code."""
    marker, path = tmp_path / "marker", tmp_path / "adapter_model.bin"
    plant(path, marker)
    result = _load_in_a_fresh_process(path, import_harness=False)
    assert result.returncode == 0, result.stderr
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
    assert 'os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"' in text  # and so does peft's own torch.load
    loads = [node for name, node in _calls(ast.parse(text)) if name == "torch.load"]
    assert loads and all(any(k.arg == "weights_only" and k.value.value is True for k in n.keywords) for n in loads)
