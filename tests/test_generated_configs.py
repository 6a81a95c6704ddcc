"""Generated LoRA configs (hypothesis): the round trip holds for every one, or fails as the table expects."""
from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given

from harness.roundtrip.check import load_case_file
from harness.specs.case_writer import case_to_toml
from harness.specs.known_issues import load_known_issues
from harness.roundtrip.strategies import lora_cases
from harness.running.cells import GeneratedCaseFailure, check_generated

KNOWN = load_known_issues()


@given(case=lora_cases())
def test_generated_lora_config_round_trips(case, bases):
    record = check_generated(case, bases=bases, known_issues=KNOWN)
    if record["status"] == "pass":
        assert record["adapter_effect"] > record["vacuity_threshold"]


@given(case=lora_cases())
def test_generated_case_is_a_valid_case_file(case, tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "case.toml"
    path.write_text(case_to_toml(case))
    loaded = load_case_file(path)
    assert loaded.raw == case


def test_a_failure_prints_a_ready_case_file(tmp_path, bases):
    case = {"id": "bert_classifier-lora-generated-bias_none-peft_safetensors-peft_from_pretrained", "family": "bert_classifier", "tags": ["generated"],
            "adapter": {"type": "LoraConfig", "kwargs": {"r": 2, "lora_alpha": 4, "target_modules": ["query"],
                                                         "modules_to_save": ["@head"]}},
            "save": {"mode": "peft_safetensors"}, "load": {"mode": "peft_from_pretrained"}}

    def nudge(model):  # a real weight change after loading: the compare must fail
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.05)

    with pytest.raises(GeneratedCaseFailure) as info:
        check_generated(case, bases=bases, known_issues=[], after_load=nudge)
    message = str(info.value)
    assert "fail at stage 'compare'" in message
    toml_text = message.split("regression case:\n\n", 1)[1]
    path = tmp_path / "regression.toml"
    path.write_text(toml_text)
    assert load_case_file(path).raw == case
    assert re.search(r'^family = "bert_classifier"$', toml_text, re.M)
