"""The round trip's checks can fail: each test breaks one thing for real and expects the right stage."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import load_case_file, run_cell
from harness.roundtrip.check import case_from_dict

ROOT = Path(__file__).resolve().parents[1]


def run(path, bases, **kwargs):
    return run_cell(load_case_file(path), "cpu", kwargs.pop("dtype", "fp32"), bases=bases, known_issues=[], **kwargs)


def test_baseline_cell_passes_with_a_real_adapter_effect(write_case, bases):
    record = run(write_case(), bases)
    assert record["status"] == "pass", record["message"]
    assert record["stage"] is None
    assert record["adapter_effect"] > record["vacuity_threshold"] > record["tolerance"]
    assert record["max_abs_diff"] <= record["tolerance"]
    assert set(record["seconds"]) == {"build", "adapt", "save", "load", "forward", "compare"}
    assert record["environment"]["peft"] and record["environment"]["torch"]


def test_vacuous_adapter_is_a_failure_not_a_pass(write_case, bases):
    # LoRA's own init (B = 0) with no fill: the adapter computes exactly the base model.
    record = run(write_case(adapter={"type": "LoraConfig", "init": "config",
                                     "kwargs": {"r": 4, "target_modules": ["query", "value"]}}), bases)
    assert record["status"] == "fail"
    assert record["stage"] == "adapt"
    assert record["message"].startswith("vacuous")
    assert record["adapter_effect"] == 0.0


def test_non_identity_init_from_the_config_passes(write_case, bases):
    record = run(write_case(adapter={"type": "LoraConfig", "init": "config", "kwargs": {
        "r": 4, "target_modules": ["query", "value"], "init_lora_weights": False}}), bases)
    assert record["status"] == "pass", record["message"]


def _truncate(artifact):
    path = os.path.join(artifact, "adapter_model.safetensors")
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


def test_truncated_checkpoint_fails_at_load_with_a_clear_message(write_case, bases):
    record = run(write_case(), bases, after_save=_truncate)
    assert record["status"] == "error"
    assert record["stage"] == "load"
    assert "adapter_model.safetensors is truncated or corrupted" in record["message"]


def test_missing_adapter_config_fails_at_load(write_case, bases):
    record = run(write_case(), bases, after_save=lambda d: os.remove(os.path.join(d, "adapter_config.json")))
    assert (record["status"], record["stage"]) == ("error", "load")
    assert "has no adapter_config.json" in record["message"]


def _drop_one_lora_tensor(artifact):
    path = os.path.join(artifact, "adapter_model.safetensors")
    tensors = load_file(path)
    victim = sorted(k for k in tensors if "lora_B" in k)[0]
    del tensors[victim]
    save_file(tensors, path)


def test_a_weight_lost_in_the_file_is_caught_at_compare(write_case, bases):
    # The loading side starts from other adapter values, so a tensor missing from the file cannot
    # coincide with the saved one.
    record = run(write_case(), bases, after_save=_drop_one_lora_tensor)
    assert record["status"] == "fail"
    assert record["stage"] == "compare"
    assert record["max_abs_diff"] > record["tolerance"]


def test_out_of_tolerance_forward_fails_at_compare(write_case, bases):
    def nudge(model):
        with torch.no_grad():
            param = next(p for n, p in model.named_parameters() if "lora_B" in n)
            param.add_(1e-3)

    record = run(write_case(), bases, after_load=nudge)
    assert record["status"] == "fail"
    assert record["stage"] == "compare"
    assert "does not reproduce the logits" in record["message"]
    assert record["tolerance"] < record["max_abs_diff"] < record["adapter_effect"]


def test_non_adapter_missing_keys_fail_the_load(write_case, bases):
    record = run(write_case(save={"mode": "torch_state_dict"}, load={"mode": "state_dict_into_base"}), bases)
    assert (record["status"], record["stage"]) == ("fail", "load")
    assert record["missing_keys"] and record["non_adapter_keys"]
    assert "non-adapter key(s) as missing" in record["message"]


def test_library_exception_is_recorded_with_stage_and_type(write_case, bases):
    # A target module that the model does not have: peft raises while applying the adapter.
    record = run(write_case(adapter={"type": "LoraConfig", "kwargs": {"r": 4, "target_modules": ["nope_proj"]}}), bases)
    assert (record["status"], record["stage"]) == ("error", "adapt")
    assert record["exception_type"].startswith("peft.")
    assert "nope_proj" in record["message"]
    json.dumps(record)  # a record is plain JSON data


def test_changed_trainable_parameter_must_survive(write_case, bases):
    # The ViT position embeddings, made trainable through the module that owns them, are changed before saving.
    data = {"id": "vit-posemb", "family": "vit_224",
            "adapter": {"type": "LoraConfig", "kwargs": {"r": 4, "target_modules": ["q_proj", "v_proj"],
                                                         "modules_to_save": ["position_embeddings"]}},
            "steps": [{"name": "train_parameter", "pattern": "position_embeddings"}],
            "save": {"mode": "peft_safetensors"}, "load": {"mode": "peft_from_pretrained"}}
    record = run(write_case(data=data), bases)
    assert (record["status"], record["stage"]) == ("fail", "adapt")
    assert "none is trainable" in record["message"]


def test_bf16_cell_runs_with_its_own_tolerance(write_case, bases):
    record = run(write_case(dtypes=["bf16"]), bases, dtype="bf16")
    assert record["status"] == "pass", record["message"]
    assert record["tolerance"] == 5e-3


KEY_MAPPING = ROOT / "cases" / "paths-peft_from_pretrained-key_mapping.toml"


@pytest.mark.parametrize("mapping, outcome", [
    (None, ("pass", None)),  # the shipped identity mapping: every key rewritten to itself
    ({"^bert\\.encoder\\.": "bert.zzz."}, ("fail", "compare")),  # the encoder's adapter weights land nowhere
])
def test_the_key_mapping_load_option_reaches_peft(mapping, outcome, bases):
    """A peft that ignored key_mapping would pass the shipped (identity) case too; a mapping that renames the
    encoder's keys must lose those adapter weights, which shows the option is applied."""
    case = load_case_file(KEY_MAPPING)
    assert case.load_options["key_mapping"] == {"^bert\\.encoder\\.": "bert.encoder."}
    if mapping is not None:
        case = case_from_dict({**case.raw, "load": {**case.raw["load"], "options": {"key_mapping": mapping}}})
    record = run_cell(case, "cpu", "fp32", bases=bases, known_issues=[])
    assert (record["status"], record["stage"]) == outcome, record["message"]
    assert record["adapter_effect"] > record["vacuity_threshold"]
