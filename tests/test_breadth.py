"""Breadth machinery: [matrix] files, module groups, full-set dtypes, buffers, and method coverage."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import run_cell
from harness.roundtrip.adapters import adapter_kwargs
from harness.roundtrip.check import load_cases, read_case_file
from harness.roundtrip.families import FAMILIES
from harness.specs.case import Case, CaseError

ROOT = Path(__file__).resolve().parents[1]

MATRIX = """
id = "{family}-loha"
description = "LoHa on {family}."

[matrix]
family = ["bert_classifier", "llama_causal"]

[adapter]
type = "LoHaConfig"
kwargs = { r = 2, target_modules = ["@targets", "@mlp"], modules_to_save = ["@head"] }

[save]
mode = "peft_safetensors"

[load]
mode = "peft_from_pretrained"
"""


def test_matrix_file_expands_per_family(case_dir):
    path = case_dir / "m.toml"
    path.write_text(MATRIX)
    bert, llama = read_case_file(path)
    assert (bert.id, llama.id) == ("bert_classifier-loha", "llama_causal-loha")
    assert llama.description == "LoHa on llama_causal."
    assert adapter_kwargs(bert)["target_modules"] == ["query", "value", "intermediate.dense"]
    assert adapter_kwargs(llama)["target_modules"] == ["q_proj", "v_proj", "gate_proj", "up_proj"]
    assert adapter_kwargs(llama)["modules_to_save"] == ["lm_head"]


@pytest.mark.parametrize("old, new, field, words", [
    ('id = "{family}-loha"', 'id = "loha"', "id", "must contain {family}"),
    ('family = ["bert_classifier", "llama_causal"]', 'family = ["bert_classifier", "bert"]', "family",
     "unknown model family 'bert'"),
    ('family = ["bert_classifier", "llama_causal"]', 'family = []', "matrix.family", "non-empty"),
    ('"@targets", "@mlp"', '"@targets", "@ffn"', "adapter.kwargs.target_modules", "no module group '@ffn'"),
    ('[matrix]', 'family = "vit_224"\n[matrix]', "family", "together with matrix.family"),
])
def test_matrix_and_group_errors_name_the_field(case_dir, old, new, field, words):
    path = case_dir / "m.toml"
    path.write_text(MATRIX.replace(old, new, 1))
    with pytest.raises(CaseError) as info:
        read_case_file(path)
    assert info.value.field == field and words in str(info.value) and str(path) in str(info.value)


def test_a_group_the_family_lacks_is_rejected(case_dir):
    path = case_dir / "m.toml"
    path.write_text(MATRIX.replace('"llama_causal"', '"resnet_classifier"'))
    with pytest.raises(CaseError, match="'resnet_classifier' has no module group '@mlp'"):
        read_case_file(path)


def test_full_dtypes_are_extra_cells_only_in_the_full_set(write_case):
    case = read_case_file(write_case(full_dtypes=["bf16"]))[0]
    assert [c for c in case.cells(full=False) if c[0] == "cpu"] == [("cpu", "fp32", False)]
    assert [c for c in case.cells(full=True) if c[0] == "cpu"] == [("cpu", "fp32", False), ("cpu", "bf16", True)]
    with pytest.raises(CaseError, match="full_dtypes.*already in dtypes"):
        read_case_file(write_case(dtypes=["bf16"], full_dtypes=["bf16"]))


def test_running_statistics_outside_modules_to_save_are_lost_and_caught():
    """The buffer check can fail: BatchNorm statistics that training moves but nobody saves."""
    case = Case.from_dict({
        "id": "resnet-bn-not-saved", "family": "resnet_classifier",
        "adapter": {"type": "LoraConfig", "kwargs": {"r": 4, "target_modules": ["@targets"], "modules_to_save": ["@head"]}},
        "steps": [{"name": "update_running_stats", "batches": 2}],
        "save": {"mode": "peft_safetensors"}, "load": {"mode": "peft_from_pretrained"}})
    record = run_cell(case, known_issues=[])
    assert (record["status"], record["stage"]) == ("fail", "compare")
    saved = Case.from_dict({**case.raw, "id": "resnet-bn-saved", "adapter": {"type": "LoraConfig", "kwargs": {
        "r": 4, "target_modules": ["@targets"], "modules_to_save": ["@head", "@norm"]}}})
    assert run_cell(saved, known_issues=[])["status"] == "pass"


def test_breadth_of_the_shipped_cases():
    cases = load_cases(ROOT / "cases")
    methods = {c.adapter_type if c.adapter_type != "LoraConfig" else
               "dora" if c.adapter_kwargs.get("use_dora") else "rslora" if c.adapter_kwargs.get("use_rslora") else "lora"
               for c in cases if "methods" in c.tags}
    assert len(methods) >= 12, sorted(methods)
    families = {c.family for c in cases}
    assert {"wav2vec2_ctc", "vit_224", "vit_512", "bert_classifier", "llama_causal", "resnet_classifier"} <= families
    option_families = {}
    for c in cases:
        if "options" in c.tags:
            option_families.setdefault(c.id.split("-", 1)[1], set()).add(c.family)
    multi = [k for k, fams in option_families.items() if len(fams) > 1]
    assert len(multi) >= 8, option_families


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_familys_auto_class_maps_its_config_to_its_model_class(name):
    """The transformers Auto path (load mode transformers_auto, and its repro.py) loads through the family's
    AutoModelFor* class: the one whose mapping gives the family's model class for its config class."""
    import transformers

    family = FAMILIES[name]
    config_class, model_class = family.classes()
    assert getattr(transformers, family.auto_class)._model_mapping[config_class] is model_class
