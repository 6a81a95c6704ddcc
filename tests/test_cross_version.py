"""The cross-version table: artifacts written by one environment, read by another.

Every new status is made to happen with the real libraries. What another release does differently is
reproduced on the artifact itself, as that release would have written or read it: a module renamed in the
saved tensors (the reader finds no module for them and computes something else), target modules the
reader's base does not have (the load is rejected), a base checkpoint the reader cannot load or that
computes other logits. The manifest's checksums are updated, so the artifact is intact, just different.
"""
from __future__ import annotations

import json
import os

import pytest

from harness import load_case_file
from harness.artifacts.read import read_cell
from harness.artifacts.store import cell_dirs, read_manifest, sha256, verify, writers
from harness.reporting.crosstable import build_cross, direction
from harness.reporting.report import read_report
from harness.running.cli import main
from harness.running.crossread import choose_writers
from harness.running.isolation import CellRunner


@pytest.fixture
def written(write_case, tmp_path, monkeypatch):
    """One BERT + LoRA cell, run and kept as an artifact under tmp/artifacts/writer-a/."""
    monkeypatch.setenv("TOX_ENV_NAME", "writer-a")
    case = load_case_file(write_case(devices=["cpu"]))
    root = tmp_path / "artifacts"
    runner = CellRunner(isolate=False, known_issues=[], artifacts=str(root))
    try:
        record = runner.run(case, "cpu", "fp32")
    finally:
        runner.close()
    assert record["status"] == "pass"
    [cell] = cell_dirs(writers(str(root))["writer-a"])
    return case, cell


def _rewrite(cell_dir: str, rel: str, change) -> None:
    """Change one file of an artifact and record its new checksum in the manifest (an intact artifact)."""
    writer_dir = os.path.dirname(os.path.dirname(cell_dir))
    path = os.path.join(writer_dir, rel)
    change(path)
    manifest_path = os.path.join(cell_dir, "manifest.json")
    manifest = json.loads(open(manifest_path).read())
    manifest["files"][rel] = sha256(path)
    open(manifest_path, "w").write(json.dumps(manifest))
    assert verify(writer_dir, read_manifest(cell_dir)) == []


def _saved(manifest: dict, name: str) -> str:
    return os.path.join(manifest["saved"], name)


def _rename_tensors(path: str, old: str, new: str) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({k.replace(old, new): v for k, v in tensors.items()}, path, metadata={"format": "pt"})


def test_the_manifest_names_versions_modes_files_and_config_keys(written):
    case, cell = written
    manifest = read_manifest(cell)
    assert manifest["cell_id"] == "bert_classifier-lora-test[cpu-fp32]"
    assert manifest["writer"]["name"] == "writer-a" and manifest["writer"]["peft"]
    assert manifest["save_mode"] == "peft_safetensors" and manifest["writer_verdict"]["status"] == "pass"
    assert "adapter_config.json" in manifest["adapter_config_keys"]
    assert "target_modules" in manifest["adapter_config_keys"]["adapter_config.json"]
    assert any(rel.endswith("adapter_model.safetensors") for rel in manifest["files"])
    assert any(rel.startswith("bases/") and rel.endswith("model.safetensors") for rel in manifest["files"])
    assert not any(rel.endswith((".pt", ".bin", ".pkl")) for rel in manifest["files"])  # nothing pickled


def test_an_intact_artifact_read_by_the_same_release_passes(written):
    case, cell = written
    record = read_cell(case, cell)
    assert record["status"] == "pass", record["message"]
    assert record["max_abs_diff"] <= record["tolerance"]
    assert record["writer"]["name"] == "writer-a" and record["dropped_config_fields"] == []


def test_a_reader_that_loses_a_tensor_fails_at_compare(written):
    """The saved LoRA tensors of the 'value' projections carry another module name, as after a rename in
    the model code: the reader loads the rest and silently drops them. It must come out as fail, not pass."""
    case, cell = written
    manifest = read_manifest(cell)
    _rewrite(cell, _saved(manifest, "adapter_model.safetensors"),
             lambda p: _rename_tensors(p, "attention.self.value", "attention.self.value_renamed"))
    record = read_cell(case, cell)
    assert record["status"] == "fail" and record["stage"] == "compare", record
    assert record["max_abs_diff"] > record["tolerance"]


def test_a_config_the_reader_rejects_is_an_error_at_load(written):
    """The saved config targets modules that the reader's base does not have (ViT's q_proj after the
    transformers 5 rename, read by 4.x): the load raises, with its stage."""
    case, cell = written
    manifest = read_manifest(cell)

    def retarget(path):
        config = json.loads(open(path).read())
        config["target_modules"] = ["q_proj", "v_proj"]
        open(path, "w").write(json.dumps(config))

    _rewrite(cell, _saved(manifest, "adapter_config.json"), retarget)
    record = read_cell(case, cell)
    assert record["status"] == "error" and record["stage"] == "load", record
    assert "q_proj" in record["message"] or "v_proj" in record["message"]


def _add_config_field_from_the_future(cell: str) -> None:
    """The saved adapter_config.json gains a field no peft has (as a newer peft would write), manifest updated."""
    manifest = read_manifest(cell)

    def add_field(path):
        config = json.loads(open(path).read())
        config["a_field_from_the_future"] = 3
        open(path, "w").write(json.dumps(config))

    _rewrite(cell, _saved(manifest, "adapter_config.json"), add_field)
    manifest = read_manifest(cell)
    manifest["adapter_config_keys"]["adapter_config.json"].append("a_field_from_the_future")
    open(os.path.join(cell, "manifest.json"), "w").write(json.dumps(manifest))


def test_a_config_field_the_reader_does_not_know_is_recorded(written):
    case, cell = written
    _add_config_field_from_the_future(cell)
    record = read_cell(case, cell)
    assert record["dropped_config_fields"] == ["a_field_from_the_future"]
    assert record["status"] in ("pass", "error")  # dropped with a warning (newer peft) or rejected (older)


def test_a_load_that_builds_its_config_from_the_case_drops_no_saved_field(written):
    """inject_adapter_in_model + set_peft_model_state_dict never reads adapter_config.json: a field the reader's
    peft lacks is not dropped by it (no 'config fields unknown to the reader' relation), and the read passes."""
    import dataclasses

    case, cell = written
    _add_config_field_from_the_future(cell)
    injected = dataclasses.replace(case, load_mode="peft_inject_set_state_dict")
    record = read_cell(injected, cell)
    assert record["dropped_config_fields"] == []
    assert record["status"] == "pass", record.get("message")
    assert read_cell(case, cell)["dropped_config_fields"] == ["a_field_from_the_future"]  # the same artifact


def test_a_base_that_does_not_load_here_is_base_incompatible(written):
    case, cell = written
    manifest = read_manifest(cell)

    def unknown_architecture(path):
        config = json.loads(open(path).read())
        config["hidden_size"] = 48  # the saved weights no longer fit the model the config describes
        open(path, "w").write(json.dumps(config))

    _rewrite(cell, os.path.join(manifest["base"], "config.json"), unknown_architecture)
    record = read_cell(case, cell)
    assert record["status"] == "base-incompatible" and record["stage"] == "build", record
    assert "does not load here" in record["message"]


def test_a_base_that_computes_other_logits_is_base_incompatible(written):
    """Weights under names the reader does not know are left at random init (as a renamed module would be):
    the base loads, but its logits differ from the writer's before any adapter is involved."""
    case, cell = written
    manifest = read_manifest(cell)
    _rewrite(cell, os.path.join(manifest["base"], "model.safetensors"),
             lambda p: _rename_tensors(p, "attention.output.dense", "attention.output.renamed"))
    record = read_cell(case, cell)
    assert record["status"] == "base-incompatible", record
    assert "computes other logits" in record["message"]


def test_a_damaged_artifact_is_never_read_as_good(written):
    case, cell = written
    manifest = read_manifest(cell)
    path = os.path.join(os.path.dirname(os.path.dirname(cell)), _saved(manifest, "adapter_model.safetensors"))
    with open(path, "r+b") as fh:
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\0" * 8)
    record = read_cell(case, cell)
    assert record["status"] == "error" and "damaged" in record["message"]


def test_write_then_read_through_the_cli(write_case, case_dir, tmp_path, monkeypatch):
    """run --artifacts in one environment, read in another (here: both in isolated workers), merge: the
    cross table has the square, the grid counts and a record per (writer, reader, cell)."""
    write_case(devices=["cpu"])
    write_case(name="two", id="bert_classifier-lora-two", devices=["cpu"],
               save={"mode": "peft_pickle"})
    root, reports = tmp_path / "artifacts", tmp_path / "reports"
    monkeypatch.setenv("TOX_ENV_NAME", "peft021-tf523")
    assert main(["run", "-q", "--cases", str(case_dir), "--out", str(reports / "peft021-tf523.json"),
                 "--artifacts", str(root)]) == 0
    monkeypatch.setenv("TOX_ENV_NAME", "peft021-tf523-read")
    assert main(["read", "-q", str(root), "--cases", str(case_dir),
                 "--out", str(reports / "cross" / "peft021-tf523.json")]) == 0
    report = read_report(str(reports / "cross" / "peft021-tf523.json"))
    assert report["phase"] == "read" and report["complete"]
    assert sorted((c["writer"]["name"], c["cell_id"], c["status"]) for c in report["cells"]) == [
        ("peft021-tf523", "bert_classifier-lora-test[cpu-fp32]", "pass"),
        ("peft021-tf523", "bert_classifier-lora-two[cpu-fp32]", "pass")]
    assert main(["merge", str(reports), "--out", str(reports / "compat.json")]) == 0
    cross = json.loads((reports / "cross.json").read_text())
    assert cross["grid"] == [{"writer": "peft021-tf523", "reader": "peft021-tf523", "direction": "same",
                              "total": 2, "counts": {"pass": 2}}]
    assert "| `peft021-tf523` |" in (reports / "cross.md").read_text()


def test_readers_read_the_oldest_the_newest_their_neighbours_and_themselves():
    names = ["a07", "b09", "c12", "d15", "e18", "f21"]
    versions = {n: {"peft": f"0.{n[1:]}.0", "transformers": "4.40.0"} for n in names}
    assert choose_writers(versions, "d15", versions["d15"], "neighbours") == ["a07", "c12", "d15", "e18", "f21"]
    assert choose_writers(versions, "a07", versions["a07"], "neighbours") == ["a07", "b09", "f21"]
    assert choose_writers(versions, "x", {"peft": "0.13.0", "transformers": "4.40.0"}, "neighbours") == [
        "a07", "c12", "d15", "f21"]
    assert choose_writers(versions, "d15", versions["d15"], "all") == names


def test_direction_says_who_reads_whom():
    old, new = {"peft": "0.8.2", "transformers": "4.38.2"}, {"peft": "0.21.2", "transformers": "5.23.0"}
    assert direction(old, new) == "backward" and direction(new, old) == "forward" and direction(old, old) == "same"


def test_findings_tell_loud_from_silent(tmp_path):
    def cell(status, writer, observed=None, stage=None):
        return {"cell_id": f"c-{status}[cpu-fp32]", "case_id": f"c-{status}", "status": status,
                "observed_status": observed, "stage": stage, "message": "m", "exception_type": None,
                "writer": {"name": writer, "peft": "0.8.2" if writer == "old" else "0.21.2",
                           "transformers": "4.38.2", "verdict": {"status": "pass"}}}

    report = {"environment": {"tox_env": "new-read", "peft": "0.21.2", "transformers": "4.38.2"},
              "cells": [cell("fail", "old", stage="compare"), cell("error", "old", stage="load"),
                        cell("pass", "new")]}
    table = build_cross([("x.json", report)])
    [finding] = table["findings"]
    assert (finding["writer"], finding["reader"], finding["direction"]) == ("old", "new", "backward")
    assert (finding["loud"], finding["silent"], finding["unexpected"]) == (1, 1, 2)


def test_the_bound_widens_only_for_a_base_that_drifts():
    from harness.artifacts.read import cross_tolerance

    assert cross_tolerance(5e-3, "bf16", 0.0, 4.0) == 5e-3  # the same kernels: no slack, a small loss shows
    assert cross_tolerance(5e-3, "bf16", 0.0078, 4.0) == max(4 * 0.0078, 2 * 2 ** -7 * 4.0)
    assert cross_tolerance(1e-5, "fp32", 2e-6, 4.0) == 1e-5  # fp32 has no ulp term


def test_merge_strict_is_red_on_a_red_cross_version_entry(tmp_path, capsys):
    from harness.reporting.report import write_report
    from harness.roundtrip.environment import environment

    reader = dict(environment(), tox_env="new-read")
    cell = {"cell_id": "c[cpu-fp32]", "case_id": "c", "family": "bert_classifier", "adapter": "LoraConfig",
            "device": "cpu", "dtype": "fp32", "status": "fail", "stage": "compare", "exception_type": "CheckFailed",
            "message": "differs", "max_abs_diff": 1.0, "tolerance": 1e-5, "seconds": {}, "warnings": [],
            "missing_keys": None, "unexpected_keys": None, "non_adapter_keys": None, "known_issue": None,
            "environment": reader, "writer": {"name": "old", "peft": "0.7.1", "transformers": "4.36.2"}}
    write_report(str(tmp_path / "cross" / "new-read.json"), [cell], environment=reader, phase="read")
    own = dict(cell, environment=dict(reader, tox_env="new"))
    own.pop("writer")
    write_report(str(tmp_path / "new.json"), [dict(own, status="pass", stage=None)], environment=own["environment"])
    from harness.reporting.merge import main as merge_main

    assert merge_main([str(tmp_path), "--out", str(tmp_path / "compat.json")]) == 0
    assert merge_main([str(tmp_path), "--out", str(tmp_path / "compat.json"), "--strict"]) == 1
    assert "1 red cross-version entries" in capsys.readouterr().out


# --- loads that find the base through adapter_config.json ---------------------------------------------------

def _write_and_close(case, root: str):
    """Run one cell as writer-a and close the runner: its base checkpoint folder is gone afterwards, as it is
    for a reader on another machine."""
    runner = CellRunner(isolate=False, known_issues=[], artifacts=str(root))
    try:
        record = runner.run(case, "cpu", "fp32")
    finally:
        runner.close()
    [cell] = cell_dirs(writers(str(root))["writer-a"])
    return record, cell


def _transformers_integration_usable() -> bool:
    """transformers' PEFT integration refuses an older peft (5.25.0 asks for peft >= 0.22.0)."""
    from packaging.version import Version

    import peft
    from transformers.integrations import peft as tf_peft

    return Version(peft.__version__) >= Version(getattr(tf_peft, "MIN_PEFT_VERSION", "0"))


@pytest.mark.parametrize("load_mode, apply, save_mode", [
    ("peft_auto", "get_peft_model", "peft_safetensors"),
    ("transformers_auto", "add_adapter", "transformers_save_pretrained"),
])
def test_a_load_through_the_saved_base_path_reads_another_writers_artifact(write_case, tmp_path, monkeypatch,
                                                                            load_mode, apply, save_mode):
    """AutoPeftModel / AutoModelFor*.from_pretrained(adapter dir) load the base that adapter_config.json names:
    the writer's temporary base folder, gone when another release reads the artifact. The reader points the
    load at the artifact's stored base through a patched temporary copy of the adapter folder; the artifact
    itself stays byte for byte as written (its checksums still verify, its config still names the writer's
    folder)."""
    if apply == "add_adapter" and not _transformers_integration_usable():
        pytest.skip("the installed transformers refuses the installed peft for add_adapter / load_adapter")
    monkeypatch.setenv("TOX_ENV_NAME", "writer-a")
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
    case = load_case_file(write_case(devices=["cpu"], adapter={"type": "LoraConfig", "apply": apply, "kwargs": kwargs},
        save={"mode": save_mode}, load={"mode": load_mode}))
    record, cell = _write_and_close(case, tmp_path / "artifacts")
    assert record["status"] == "pass", record["message"]
    manifest = read_manifest(cell)
    writer_dir = os.path.dirname(os.path.dirname(cell))
    config_path = os.path.join(writer_dir, _saved(manifest, "adapter_config.json"))
    named_base = json.loads(open(config_path).read())["base_model_name_or_path"]
    assert named_base and not os.path.exists(named_base), "the writer's base folder should be gone"

    read = read_cell(case, cell)
    assert read["status"] == "pass", read["message"]
    assert read["max_abs_diff"] <= read["tolerance"]
    assert verify(writer_dir, manifest) == []
    assert json.loads(open(config_path).read())["base_model_name_or_path"] == named_base


def test_a_bin_save_after_add_adapter_is_read_from_the_files_the_manifest_lists(write_case, tmp_path, monkeypatch):
    """save_pretrained(safe_serialization=False) after add_adapter writes adapter_model.bin: the manifest lists
    it (and no safetensors file), and a reader loads it."""
    if not _transformers_integration_usable():
        pytest.skip("the installed transformers refuses the installed peft for add_adapter / load_adapter")
    monkeypatch.setenv("TOX_ENV_NAME", "writer-a")
    case = load_case_file(write_case(devices=["cpu"], adapter={
        "type": "LoraConfig", "apply": "add_adapter", "kwargs": {"r": 4, "lora_alpha": 8, "target_modules": ["query"]}},
        save={"mode": "transformers_save_pretrained", "options": {"safe_serialization": False}},
        load={"mode": "transformers_load_adapter"}))
    record, cell = _write_and_close(case, tmp_path / "artifacts")
    assert record["status"] == "pass", record["message"]
    from packaging.version import Version

    import transformers

    manifest = read_manifest(cell)
    writer_dir = os.path.dirname(os.path.dirname(cell))
    listed = sorted(os.path.basename(f) for f in manifest["files"] if f.startswith(manifest["saved"]))
    assert listed == sorted(os.listdir(os.path.join(writer_dir, manifest["saved"])))
    weights = [name for name in listed if name.startswith("adapter_model.")]
    # transformers 4.x writes the .bin asked for; 5.x writes safetensors whatever safe_serialization says
    expected = "adapter_model.bin" if Version(transformers.__version__) < Version("5") else "adapter_model.safetensors"
    assert weights == [expected], listed
    read = read_cell(case, cell)
    assert read["status"] == "pass", read["message"]
