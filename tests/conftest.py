"""Fixtures for the harness's own tests: cases written as real TOML files in a temporary folder, a module's base
checkpoints, and running a repro.py with the harness made unimportable."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest

BERT_LORA = {
    "id": "bert_classifier-lora-test",
    "family": "bert_classifier",
    "adapter": {"type": "LoraConfig",
                "kwargs": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}},
    "save": {"mode": "peft_safetensors"},
    "load": {"mode": "peft_from_pretrained"},
}
# What a repro.py may import; the modules the harness is made of must not appear (the script stands alone).
REPRO_IMPORTS = {"torch", "transformers", "peft", "safetensors",
                 "os", "re", "shutil", "sys", "tempfile", "zlib", "copy"}


def run_repro(path):
    """Run a repro.py with the harness made unimportable: it must stand alone."""
    code = ("import runpy, sys; sys.modules['harness'] = None; "
            f"runpy.run_path({str(path)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=path.parent)


@pytest.fixture(scope="module")
def bases():
    """The base checkpoints of one test module (built on first use), removed after the module."""
    from harness.roundtrip.families import BaseCheckpoints

    checkpoints = BaseCheckpoints()
    yield checkpoints
    checkpoints.remove()


def to_toml(data: dict) -> str:
    """A small TOML writer for the test cases (strings, numbers, bools, lists, nested tables)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    lines, tables = [], []
    for key, v in data.items():
        if isinstance(v, dict):
            tables.append((key, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.extend((f"[{key}]", x) for x in v)
        else:
            lines.append(f"{key} = {value(v)}")
    for key, table in tables:
        lines.append(f"\n[{key}]")
        lines += [f"{k} = {value(x)}" for k, x in table.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def case_dir(tmp_path):
    d = tmp_path / "cases"
    d.mkdir()
    return d


@pytest.fixture
def write_case(case_dir):
    """write_case(**changes) -> path of a TOML case file: BERT + LoRA with `changes` merged in (None deletes)."""
    def write(name: str | None = None, data: dict | None = None, **changes):
        case = copy.deepcopy(BERT_LORA if data is None else data)
        for key, v in changes.items():
            if v is None:
                case.pop(key, None)
            else:
                case[key] = v
        path = case_dir / f"{name or case['id']}.toml"
        path.write_text(to_toml(case))
        return path
    return write


def skip_unless_installed(what: str, reason: str) -> None:
    """Skip for a missing tool locally; in CI (CI=true), where the test extras install it, fail instead:
    a tool that vanished from the environment must not turn its check into a silent skip."""
    import os

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is missing in CI, where the test extras install it: {reason}")
    pytest.skip(reason)
