"""Every PEFT method is covered by a case or listed, with its reason, as one that cannot be: the installed
peft.PeftType members against the cases (each case's PeftType read from peft's own config mapping) and
harness/specs/uncovered_methods.toml. The list is checked too: an entry that is not a PeftType member, or that a
case covers, fails. The README's coverage section is what the cases and the list say."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.roundtrip.adapters import KNOWN_ADAPTER_TYPES
from harness.roundtrip.cell import adapter_effect
from harness.roundtrip.check import case_from_dict, load_cases
from harness.roundtrip.coverage import (README_BEGIN, README_END, config_class_to_peft_type, coverage_problems,
                                        covered_methods, peft_types, render_readme_section)
from harness.specs.uncovered import UncoveredError, load_uncovered, parse_uncovered

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cases():
    return load_cases(ROOT / "cases")


def test_every_peft_type_is_covered_or_listed_with_a_reason(cases):
    assert coverage_problems(cases, load_uncovered()) == []


def test_a_peft_type_neither_covered_nor_listed_fails(cases):
    uncovered = load_uncovered()
    uncovered.pop("ADAMSS")
    assert coverage_problems(cases, uncovered) == [
        "ADAMSS: no case covers it and harness/specs/uncovered_methods.toml does not say why"]
    without_poly = [c for c in cases if c.adapter_type != "PolyConfig"]
    assert coverage_problems(without_poly, load_uncovered()) == [
        "POLY: no case covers it and harness/specs/uncovered_methods.toml does not say why"]


def test_a_listed_method_that_is_covered_or_not_a_peft_type_fails(cases):
    entry = {"needs": "gpu", "reason": "because"}
    problems = coverage_problems(cases, {**load_uncovered(), "LORA": entry, "NOT_A_METHOD": entry})
    assert len(problems) == 2
    assert problems[0].startswith("NOT_A_METHOD: listed as uncovered, but peft ") and "has no such PeftType" in problems[0]
    assert problems[1].startswith("LORA: listed as uncovered, but the cases cover it on bert_classifier, ")


def test_coverage_comes_from_the_config_class_and_honours_requires(cases):
    covered = covered_methods(cases)
    assert covered["LORA"][0] == "bert_classifier" and "resnet_classifier" in covered["HIRA"]
    assert covered["P_TUNING"] == ["bert_classifier"]  # PromptEncoderConfig: the mapping, not the class name
    never = case_from_dict({"id": "bert_classifier-poly-never", "family": "bert_classifier",
                            "adapter": {"type": "PolyConfig", "kwargs": {"task_type": "SEQ_CLS"}},
                            "save": {"mode": "peft_safetensors"}, "load": {"mode": "peft_from_pretrained"},
                            "requires": {"peft": "<0.1"}})
    assert covered_methods([never]) == {}


def test_every_config_class_of_the_installed_peft_is_a_known_adapter_type():
    assert sorted(set(config_class_to_peft_type()) - KNOWN_ADAPTER_TYPES) == []
    assert len(config_class_to_peft_type()) == len(peft_types())  # one config class per PeftType member


@pytest.mark.parametrize("data, words", [
    ({"adamss": {"needs": "library", "reason": "x"}}, "capitals"),
    ({"ADAMSS": {"needs": "library"}}, "exactly `needs` and `reason`"),
    ({"ADAMSS": {"needs": "disk", "reason": "x"}}, "needs = 'disk' is not one of"),
    ({"ADAMSS": {"needs": "library", "reason": "  "}}, "reason must say why"),
])
def test_a_malformed_uncovered_entry_is_rejected_with_its_name(data, words):
    with pytest.raises(UncoveredError, match=re.escape(words)) as info:
        parse_uncovered(data)
    assert "uncovered_methods.toml: [" in str(info.value)


# Rewrites README.md's coverage section from the cases and the uncovered list of the installed peft.
RERENDER = ("python -c \"from pathlib import Path; from harness.roundtrip.check import load_cases; "
            "from harness.roundtrip.coverage import README_BEGIN, README_END, render_readme_section; "
            "from harness.specs.uncovered import load_uncovered; p = Path('README.md'); t = p.read_text(); "
            "s, e = t.index(README_BEGIN), t.index(README_END) + len(README_END); "
            "p.write_text(t[:s] + render_readme_section(load_cases('cases'), load_uncovered()) + t[e:])\"")


def test_readme_lists_the_coverage(cases):
    """Fails, never skips, when the README was rendered for another peft: the tests run in the project's pinned
    environment, and a section rendered elsewhere is out of date for it."""
    import peft

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    assert f"peft {peft.__version__}:" in readme[start:end], (
        f"README.md's method coverage is rendered for another peft than the installed {peft.__version__}: "
        f"re-render it in the project's environment, from the repository root: {RERENDER}")
    assert readme[start:end] == render_readme_section(cases, load_uncovered()), (
        f"README.md's method coverage is out of date: re-render it, from the repository root: {RERENDER}")


def test_forward_kwargs_reach_the_adapted_model_and_are_needed():
    """POLY's router needs task ids: without adapter.forward_kwargs the cell errors, with them it passes."""
    from harness import run_cell

    data = {"id": "llama_causal-poly-test", "family": "llama_causal",
            "adapter": {"type": "PolyConfig", "kwargs": {"task_type": "@task_type", "r": 4, "n_tasks": 2,
                                                          "n_skills": 2, "target_modules": ["@targets"]},
                        "forward_kwargs": {"task_ids": [0, 1]}},
            "save": {"mode": "peft_safetensors"}, "load": {"mode": "peft_from_pretrained"}}
    record = run_cell(case_from_dict(data), "cpu", "fp32")
    assert record["status"] == "pass" and record["adapter_effect"] > 0.1
    del data["adapter"]["forward_kwargs"]
    record = run_cell(case_from_dict(data), "cpu", "fp32")
    assert (record["status"], record["stage"]) == ("error", "adapt")
    assert "task_ids should not be None" in record["message"]


def test_prepended_virtual_tokens_do_not_count_as_an_effect():
    import torch

    base = torch.zeros(2, 12, 5)
    assert adapter_effect(torch.cat([torch.full((2, 4, 5), 9.0), base], dim=1), base) == 0.0
    assert adapter_effect(torch.cat([torch.zeros(2, 4, 5), base + 0.5], dim=1), base) == 0.5
    assert adapter_effect(torch.zeros(2, 3), torch.zeros(2, 4)) == float("inf")  # another shape: not comparable
