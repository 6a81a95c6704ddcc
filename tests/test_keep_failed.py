"""--keep-failed DIR keeps the checkpoint of every failing cell with record.json and a standalone repro.py that
reproduces the failure with torch / transformers / peft / safetensors only; passing cells keep nothing."""
from __future__ import annotations

import ast
import json
import os
import pathlib
import shutil

import pytest

from harness import load_case_file
from harness.running.cli import main
from harness.running.repro import repro_script
from tests.conftest import REPRO_IMPORTS as ALLOWED, run_repro

ROOT = pathlib.Path(__file__).resolve().parents[1]
# S1 fails at save from peft 0.12 on, whatever the transformers release (S4 stopped reaching its save stage with
# transformers 5.24, which refuses peft 0.21 at add_adapter)
S1 = ROOT / "cases" / "wav2vec2_ctc-lora-new_vocab-peft_safetensors.toml"
XLORA = ROOT / "cases" / "methods-xlora.toml"


def imports(text):
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    return names


@pytest.fixture
def s1_and_a_pass(case_dir, write_case):
    shutil.copy(S1, case_dir / S1.name)
    write_case(id="bert_classifier-lora-ok", devices=["cpu"])
    return case_dir


def test_keep_failed_keeps_the_failing_cell_and_its_repro_reproduces_it(s1_and_a_pass, tmp_path, monkeypatch):
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    keep, out = tmp_path / "kept", tmp_path / "r.json"
    assert main(["run", "--cases", str(s1_and_a_pass), "--device", "cpu", "--out", str(out), "-q",
                 "--keep-failed", str(keep)]) == 0  # the S1 failure is a known issue: expected-failure
    cell = "wav2vec2_ctc-lora-new_vocab-peft_safetensors_cpu-fp32"
    assert sorted(os.listdir(keep)) == [cell]  # the passing cell left nothing
    folder = keep / cell
    assert {"record.json", "repro.py", "artifact"} <= set(os.listdir(folder))
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "expected-failure" and record["stage"] == "save"
    report = json.loads(out.read_text())
    kept = [c for c in report["cells"] if c.get("artifact_dir")]
    assert [c["artifact_dir"] for c in kept] == [str(folder)]
    assert sorted(p for p in os.listdir(tmp) if not p.startswith("torchinductor_")) == []  # nothing else left

    text = (folder / "repro.py").read_text()
    assert imports(text) <= ALLOWED, imports(text)
    result = run_repro(folder / "repro.py")
    assert result.returncode == 1
    assert "REPRODUCED: the round trip fails at stage 'save'" in result.stderr
    assert "get_input_embeddings" in result.stderr  # the same exception as the upstream issue


def test_the_repro_of_x_lora_saves_its_experts_and_fails_where_the_harness_does(case_dir, tmp_path):
    """X-LoRA mixes LoRA experts that the harness saves before get_peft_model ("@saved_lora") and deletes after
    it: the script does the same, so it meets the same load failure (the experts' folders are gone), not an
    error at adapt over a literal "@saved_lora" path."""
    shutil.copy(XLORA, case_dir / XLORA.name)
    keep = tmp_path / "kept"
    assert main(["run", "--cases", str(case_dir), "--device", "cpu", "-k", "fp32", "--out", str(tmp_path / "r.json"),
                 "-q", "--keep-failed", str(keep)]) == 0  # a known issue: expected-failure
    folder = keep / "llama_causal-xlora_cpu-fp32"
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "expected-failure" and record["stage"] == "load", record
    text = (folder / "repro.py").read_text()
    assert "@saved_lora" in text and imports(text) <= ALLOWED
    result = run_repro(folder / "repro.py")
    assert result.returncode == 1, result.stdout
    assert "REPRODUCED: the round trip fails at stage 'load'" in result.stderr
    assert "Can't find 'adapter_config.json'" in result.stderr and "experts/lora-0" in result.stderr


def test_the_repro_of_a_passing_cell_says_so(write_case, tmp_path):
    """The script is a real round trip, not a script that always fails."""
    case = load_case_file(write_case(devices=["cpu"]))
    path = tmp_path / "repro.py"
    path.write_text(repro_script(case, {"cell_id": "x", "status": "fail", "device": "cpu", "dtype": "fp32",
                                        "tolerance": 1e-5, "stage": "compare"}))
    result = run_repro(path)
    assert result.returncode == 0, result.stderr
    assert "NOT REPRODUCED: the round trip passes" in result.stdout


@pytest.mark.skipif(os.environ.get("PEFT_COMPAT_SLOW") != "1", reason="slow (~5 s per failing cell): PEFT_COMPAT_SLOW=1")
def test_every_shipped_failing_cell_is_reproduced_at_its_stage(tmp_path):
    """Slow (one interpreter per failing cell): every kept cell of the shipped CPU matrix reproduces."""
    keep = tmp_path / "kept"
    main(["run", "--device", "cpu", "--fast", "--out", str(tmp_path / "r.json"), "-q", "--keep-failed", str(keep)])
    folders = sorted(keep.iterdir())
    assert folders
    for folder in folders:
        record = json.loads((folder / "record.json").read_text())
        result = run_repro(folder / "repro.py")
        assert result.returncode == 1, folder.name
        assert f"fails at stage '{record['stage']}'" in result.stderr, (folder.name, result.stderr[-2000:])


def _pairs():
    from harness.roundtrip.modes import LOAD_MODES, SAVE_MODES

    return [(s, l) for s in SAVE_MODES for l in LOAD_MODES if SAVE_MODES[s].produces == LOAD_MODES[l].consumes]


@pytest.mark.skipif(os.environ.get("PEFT_COMPAT_SLOW") != "1", reason="slow (~10 s per pair): PEFT_COMPAT_SLOW=1")
@pytest.mark.parametrize("save, load", _pairs())
def test_the_repro_of_every_save_load_pair_agrees_with_the_harness(save, load, tmp_path):
    """Each mode's repro snippet does what the mode does: the script passes where the harness's round trip
    passes, and fails at the same stage where it fails."""
    from harness.roundtrip.cell import run_roundtrip
    from harness.roundtrip.check import case_from_dict
    from harness.roundtrip.modes import SAVE_MODES

    case = case_from_dict({
        "id": f"bert_classifier-lora-{save}-{load}", "family": "bert_classifier",
        "adapter": {"type": "LoraConfig", "apply": SAVE_MODES[save].applies[0],
                    "kwargs": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}},
        "save": {"mode": save}, "load": {"mode": load}})
    record = run_roundtrip(case, "cpu", "fp32")
    assert record["status"] in ("pass", "fail", "error"), record
    path = tmp_path / "repro.py"
    path.write_text(repro_script(case, record))
    result = run_repro(path)
    if record["status"] == "pass":
        assert result.returncode == 0 and "NOT REPRODUCED" in result.stdout, result.stderr[-2000:]
    else:
        assert result.returncode == 1, result.stdout
        assert f"fails at stage '{record['stage']}'" in result.stderr, (record["message"], result.stderr[-2000:])
