"""Fast checks (no model is built) that every registered save mode, load mode, step and family carries a repro
snippet, and that the repro.py assembled from them is valid Python for every save/load mode pair, every family
and every step. tests/test_keep_failed.py runs generated scripts end to end."""
from __future__ import annotations

import ast

import pytest

from harness.roundtrip.check import case_from_dict
from harness.roundtrip.families import FAMILIES
from harness.roundtrip.modes import LOAD_MODES, SAVE_MODES
from harness.roundtrip.steps import STEPS
from harness.running.repro import function_body, repro_script, template_text
from tests.conftest import REPRO_IMPORTS as ALLOWED_IMPORTS

RECORD = {"cell_id": "x[cpu-fp32]", "status": "fail", "stage": "compare", "device": "cpu", "dtype": "fp32",
          "tolerance": 1e-5}
PAIRS = [(s, l) for s in SAVE_MODES for l in LOAD_MODES if SAVE_MODES[s].produces == LOAD_MODES[l].consumes]
STEP_VALUES = {int: 2, str: "lora_", bool: True}


def _registered():
    yield from ((f"save mode {m.name}", m.repro) for m in SAVE_MODES.values())
    yield from ((f"load mode {m.name}", m.repro) for m in LOAD_MODES.values())
    yield from ((f"step {s.name}", s.repro) for s in STEPS.values())
    yield from ((f"inputs of family {f.name}", f.make_inputs.repro) for f in FAMILIES.values())


@pytest.mark.parametrize("what, snippet", list(_registered()), ids=lambda v: v if " " in str(v) else "")
def test_every_registered_mode_step_and_family_has_a_snippet_that_parses(what, snippet):
    assert isinstance(snippet, str) and snippet.strip(), f"{what} has no repro snippet"
    ast.parse("def f():\n" + function_body(snippet))  # a function body as the script holds it


def test_load_snippets_return_the_model_and_the_api_result():
    for mode in LOAD_MODES.values():
        body = ast.parse("def load(base_dir, path, options):\n" + function_body(mode.repro)).body[0]
        returns = [n for n in ast.walk(body) if isinstance(n, ast.Return)]
        assert returns and all(isinstance(r.value, ast.Tuple) and len(r.value.elts) == 2 for r in returns), mode.name


def _case(save: str, load: str, family: str = "bert_classifier", steps=()):
    apply = SAVE_MODES[save].applies[0]
    return case_from_dict({
        "id": f"{family}-lora-{save}-{load}", "family": family,
        "adapter": {"type": "LoraConfig", "apply": apply, "kwargs": {"r": 4, "target_modules": ["@targets"]}},
        "steps": list(steps), "save": {"mode": save}, "load": {"mode": load},
    })


def _compiles(text: str) -> set[str]:
    compile(text, "repro.py", "exec")
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    assert names <= ALLOWED_IMPORTS, names
    return names


@pytest.mark.parametrize("save, load", PAIRS)
def test_the_repro_of_every_save_load_pair_compiles(save, load):
    text = repro_script(_case(save, load), RECORD)
    _compiles(text)
    assert f'"""Save mode {save}."""' in text and f'"""Load mode {load}:' in text
    assert function_body(SAVE_MODES[save].repro) in text and function_body(LOAD_MODES[load].repro) in text


def test_every_save_mode_and_load_mode_is_in_some_pair():
    assert {s for s, _ in PAIRS} == set(SAVE_MODES) and {l for _, l in PAIRS} == set(LOAD_MODES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_repro_of_every_family_compiles(family):
    _compiles(repro_script(_case("peft_safetensors", "peft_from_pretrained", family), RECORD))


def test_the_repro_with_every_step_compiles():
    steps = [{"name": s.name, **{p: STEP_VALUES[t] for p, t in s.params.items()}} for s in STEPS.values()]
    text = repro_script(_case("peft_safetensors", "peft_from_pretrained", steps=steps + steps[:1]), RECORD)
    _compiles(text)
    for step in STEPS.values():
        assert text.count(f"def step_{step.name}(model, ") == 1  # a step used twice is defined once


def test_what_the_record_says_cannot_break_the_script():
    """The observed message goes into the docstring: quotes, backslashes and $ placeholders stay text."""
    message = 'KeyError: """ \\N{oops} \\u12 C:\\path ${cell_id} $x "'
    record = {**RECORD, "exception_type": "builtins.KeyError", "message": message, "case_file": "C:\\cases\\x.toml",
              "known_issue": {"reference": "https://example.org/1", "stage": "load"}}
    text = repro_script(_case("peft_safetensors", "peft_from_pretrained"), record)
    _compiles(text)
    doc = ast.get_docstring(ast.parse(text))
    assert message.replace('"""', "'''") in doc and "C:\\cases\\x.toml" in doc and "https://example.org/1" in doc


def test_the_template_is_package_data_with_only_known_placeholders():
    import string

    text = template_text()
    names = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)
             if m.group("named") or m.group("braced")}
    assert "save" in names and "load" in names and "family_inputs" in names
    assert not [m for m in string.Template.pattern.finditer(text) if m.group("invalid") is not None]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_inputs_snippet_makes_the_same_tensors_as_the_harness(family):
    """The family's repro snippet and its implementation give identical tensors (small tensors, no model)."""
    import torch
    import transformers

    fam = FAMILIES[family]
    config = getattr(transformers, fam.config_class)(**fam.tiny_config)
    namespace = {"torch": torch}
    exec("def family_inputs(config, gen):\n" + function_body(fam.make_inputs.repro), namespace)
    ours = fam.make_inputs(config, torch.Generator().manual_seed(7))
    theirs = namespace["family_inputs"](config, torch.Generator().manual_seed(7))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
