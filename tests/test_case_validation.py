"""A malformed case file is rejected with the file and the field named; every shipped case is valid."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.roundtrip.check import load_case_file, load_cases
from harness.specs.case import CaseError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_cases_are_valid_and_unique():
    cases = load_cases(ROOT / "cases")
    assert len({c.id for c in cases}) == len(cases)
    seeds = {t for c in cases for t in c.tags if t.startswith("s") and t[1:].isdigit()}
    assert seeds == {"s1", "s2", "s3", "s4", "s5"}


def test_valid_case_round_trips_into_record(write_case):
    case = load_case_file(write_case(dtypes=["fp32", "bf16"]))
    assert (case.family, case.adapter_type, case.method) == ("bert_classifier", "LoraConfig", "lora")
    assert case.dtypes == ("fp32", "bf16") and case.devices == ("cpu", "cuda", "cuda_to_cpu")


@pytest.mark.parametrize("changes, field, words", [
    ({"famly": "bert_classifier"}, "famly", "unknown field"),
    ({"family": "bert_clasifier"}, "family", "unknown model family"),
    ({"save": {"mode": "peft_safetensor"}}, "save.mode", "unknown save mode"),
    ({"load": {"mode": "peft_from_pretrained", "option": {}}}, "load.option", "unknown field"),
    ({"adapter": {"type": "LoraConfg"}}, "adapter.type", "unknown adapter type"),
    ({"adapter": {"type": "LoraConfig", "aply": "add_adapter"}}, "adapter.aply", "unknown field"),
    ({"dtypes": ["fp64"]}, "dtypes.0", "fp64"),
    ({"dtypes": []}, "dtypes", "no cell"),
    ({"load": {"mode": "peft_from_pretrained", "options": {"base_dtype": "float8"}}}, "load.options.base_dtype",
     "not a dtype"),
    ({"save": {"mode": "peft_mixed_each_adapter"}}, "save.mode", "does not work with adapter.apply"),
    ({"family": None}, "family", "is required"),
    ({"save": {"mode": "transformers_save_pretrained"}}, "save.mode", "does not work with adapter.apply"),
    ({"save": {"mode": "merged_full"}}, "load.mode", "reads a adapter_dir"),
    ({"requires": {"peft": ">=0.14,<0.10"}}, "requires.peft", "can never be met"),
    ({"adapter": {"type": "PolyConfig", "forward_kwargs": {"task_ids": 3}}}, "adapter.forward_kwargs.task_ids",
     "is not valid under any of the given schemas"),
    ({"adapter": {"type": "CPTConfig", "forward_kwargs": {"labels": "input_ids"}}}, "adapter.forward_kwargs.labels",
     "is not valid under any of the given schemas"),
    ({"family": "vit_224", "adapter": {"type": "PolyConfig", "kwargs": {"task_type": "@task_type"}}},
     "adapter.kwargs.task_type", "has no PEFT task type"),
    ({"requires": {"peft": "newest"}}, "requires.peft", "not a version specifier"),
    ({"steps": [{"name": "resize_token_embeddings"}]}, "steps.0", "takes exactly ['size']"),
    ({"steps": [{"name": "resize_token_embeddings", "size": "big"}]}, "steps.0.size", "must be int"),
    ({"steps": [{"name": "shrink"}]}, "steps.0.name", "unknown step"),
    ({"tolerance": {"fp32": 1e-4}}, "tolerance.reason", "is required"),
    ({"tolerance": {"bf16": 1e-2, "reason": "x y z"}}, "tolerance.bf16", "dtype the case does not run"),
])
def test_malformed_case_names_file_and_field(write_case, changes, field, words):
    path = write_case(**changes)
    with pytest.raises(CaseError) as info:
        load_case_file(path)
    assert info.value.field == field
    assert str(path) in str(info.value) and f"field '{field}'" in str(info.value)
    assert words in str(info.value)


def test_toml_syntax_error_names_file(case_dir):
    path = case_dir / "broken.toml"
    path.write_text('id = "x\nfamily = 3\n')
    with pytest.raises(CaseError, match=r"broken\.toml: not valid TOML"):
        load_case_file(path)


def test_duplicate_id_names_both_files(write_case, case_dir):
    first = write_case(name="a")
    second = write_case(name="b")
    with pytest.raises(CaseError) as info:
        load_cases(case_dir)
    assert info.value.field == "id"
    assert str(second) in str(info.value) and str(first) in str(info.value)


def test_pytest_collection_stops_with_one_clear_message(write_case, case_dir):
    write_case(name="good", id="good-case")
    bad = write_case(name="bad", id="bad-case", famly="vit_224")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "harness.running.plugin", "--cases", str(case_dir),
                             str(case_dir), "-q", "-p", "no:cacheprovider", "--rootdir", str(case_dir)],
                            capture_output=True, text=True, cwd=case_dir)
    assert result.returncode == 4, result.stdout + result.stderr
    assert f"{bad}: field 'famly': unknown field 'famly'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_validate_reports_error_without_traceback(write_case, case_dir):
    write_case(save={"mode": "nope"})
    result = subprocess.run([sys.executable, "-m", "harness", "validate", "--cases", str(case_dir)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "field 'save.mode': unknown save mode 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
