"""Data-driven initialisations (harness/roundtrip/calibration.py) and the LoftQ save / load pair, with the real
libraries: a calibration really moves the adapter (and, for CorDA, the base) away from the default init, runs
before the simulated training and survives it, is replayed by repro.py, and a case can only name one that
exists; the adapter-and-base artifact is what the loading side really uses."""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import run_cell
from harness.roundtrip.adapters import apply_adapter, fill_trainable
from harness.roundtrip.calibration import CALIBRATION_SEED, calibration_batches
from harness.roundtrip.cell import load_base, run_roundtrip
from harness.roundtrip.check import case_from_dict, read_case_file
from harness.roundtrip.families import FAMILIES, make_inputs
from harness.roundtrip.modes import ADAPTER_SUBDIR, BASE_SUBDIR
from harness.running.repro import repro_script
from harness.specs.case import CaseError
from tests.conftest import BERT_LORA, run_repro

ROOT = Path(__file__).resolve().parents[1]
needs_eva = pytest.mark.skipif(not hasattr(peft, "initialize_lora_eva_weights"), reason="peft < 0.14 has no EVA")
needs_corda = pytest.mark.skipif(not hasattr(peft.tuners.lora.config, "CordaConfig"), reason="peft < 0.15: no CorDA")


def shipped(name: str, family: str):
    return next(c for c in read_case_file(ROOT / "cases" / name) if c.family == family)


def adapted(case, bases, dtype="fp32"):
    base_dir = bases.get(FAMILIES[case.family], case.model_config)
    torch.manual_seed(0)
    return apply_adapter(load_base(case, base_dir, "cpu", dtype), case), base_dir


def lora_layers(model):
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


@needs_eva
def test_eva_sets_lora_a_to_orthonormal_input_directions_and_redistributes_ranks(bases):
    case = shipped("methods-lora_eva.toml", "llama_causal")
    model, _ = adapted(case, bases)
    plain, _ = adapted(dataclasses.replace(case, adapter_calibration=None,
                                           adapter_kwargs={**case.adapter_kwargs, "init_lora_weights": True,
                                                           "eva_config": None}), bases)
    plain_a = {n: m.lora_A["default"].weight for n, m in lora_layers(plain).items()}
    for name, layer in lora_layers(model).items():
        a = layer.lora_A["default"].weight.detach().float()
        # principal directions (no whitening): orthonormal rows, which the default (Kaiming) init is not
        assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4), name
        assert not torch.allclose(plain_a[name] @ plain_a[name].T, torch.eye(plain_a[name].shape[0]), atol=1e-2)
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # EVA leaves B at zero: fill trains it
    ranks = model.peft_config["default"].rank_pattern
    assert ranks and set(ranks.values()) != {4}, ranks  # rho = 2 moved rank between layers
    assert {lora_layers(model)[f"base_model.model.{k}"].r["default"] for k in ranks} == set(ranks.values())


@needs_corda
def test_corda_puts_the_top_components_in_the_adapter_and_leaves_the_residual_in_the_base(bases):
    case = shipped("methods-lora_corda_converted.toml", "bert_classifier")
    model, base_dir = adapted(case, bases)
    pristine = load_base(case, base_dir, "cpu", "fp32").state_dict()
    layers = lora_layers(model)
    assert layers
    for name, layer in layers.items():
        weight = layer.get_base_layer().weight.detach()
        original = pristine[name.removeprefix("base_model.model.") + ".weight"]
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        assert (weight - original).abs().max() > 0.1, name  # the base was rewritten ...
        assert torch.allclose(weight + delta.detach(), original, atol=1e-5), name  # ... into W minus the adapter


def test_calibration_data_are_the_familys_inputs_with_their_own_seed(bases):
    case = shipped("methods-lora_eva.toml", "bert_classifier")
    model = load_base(case, bases.get(FAMILIES[case.family], case.model_config), "cpu", "bf16")
    batches = calibration_batches(model)
    family = FAMILIES[case.family]
    assert len(batches) > 1
    assert torch.equal(batches[1]["input_ids"], make_inputs(family, model.config, seed=CALIBRATION_SEED + 1)["input_ids"])
    assert not torch.equal(batches[0]["input_ids"], make_inputs(family, model.config)["input_ids"])  # not the compared


@needs_eva
def test_the_fill_adds_to_what_the_calibration_set_and_the_round_trip_passes(bases):
    """The calibration runs before fill_trainable: lora_A after adapting is the EVA directions plus the fill's
    noise, not the noise alone; and the cell still shows an effect, then reproduces it."""
    case = shipped("methods-lora_eva.toml", "bert_classifier")
    seen = {}

    def keep(model):
        seen["a"] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    record = run_cell(case, "cpu", "fp32", bases=bases, known_issues=[], after_load=keep)
    assert record["status"] == "pass", record["message"]
    assert record["adapter_effect"] > record["vacuity_threshold"]
    calibrated, _ = adapted(case, bases)
    zeroed = copy.deepcopy(calibrated)
    eva = {n: p.detach().clone() for n, p in calibrated.named_parameters() if "lora_A" in n}  # before the fill
    with torch.no_grad():
        for p in zeroed.parameters():
            if p.requires_grad:
                p.zero_()
    fill_trainable(zeroed)  # on zeros, what the fill leaves is the fill's own increment
    increment = {n: p.detach() for n, p in zeroed.named_parameters() if "lora_A" in n}
    fill_trainable(calibrated)
    filled = {n: p.detach() for n, p in calibrated.named_parameters() if "lora_A" in n}
    assert seen["a"] and set(seen["a"]) == set(eva)
    for name, loaded in seen["a"].items():
        assert increment[name].abs().max() > 0.1, name  # the fill really moves lora_A
        assert torch.allclose(filled[name] - eva[name], increment[name], atol=1e-6), name  # it adds, not sets
        assert torch.allclose(loaded, eva[name] + increment[name], atol=1e-6), name  # saved: EVA + fill ...
        a = (loaded - increment[name]).float()  # ... so taking the fill away leaves EVA's orthonormal rows
        assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4), name


def test_a_case_can_only_name_a_calibration_that_exists_and_only_around_get_peft_model():
    data = {**BERT_LORA, "adapter": {**BERT_LORA["adapter"], "calibration": "evaa"}}
    with pytest.raises(CaseError, match="adapter.calibration.*unknown calibration 'evaa'"):
        case_from_dict(data)
    data = {**BERT_LORA, "adapter": {**BERT_LORA["adapter"], "calibration": "eva", "apply": "add_adapter"},
            "save": {"mode": "transformers_save_pretrained"}, "load": {"mode": "transformers_load_adapter"}}
    with pytest.raises(CaseError, match="adapter.calibration.*around get_peft_model"):
        case_from_dict(data)


@needs_corda
@pytest.mark.parametrize("name, family, dtype", [("methods-lora_corda_converted.toml", "bert_classifier", "fp32"),
                                                 ("methods-lora_eva.toml", "llama_causal", "bf16")])
def test_repro_replays_the_calibration_and_agrees_with_the_harness(name, family, dtype, tmp_path):
    case = shipped(name, family)
    record = run_roundtrip(case, "cpu", dtype)
    path = tmp_path / "repro.py"
    path.write_text(repro_script(case, record))
    result = run_repro(path)
    if record["status"] == "pass":
        assert result.returncode == 0 and "NOT REPRODUCED" in result.stdout, result.stderr[-2000:]
    else:  # EVA in bf16: the redistributed layers' adapters stay bf16 (known issue): the same diff
        assert result.returncode == 1 and f"{record['max_abs_diff']:.3g}" in result.stderr, result.stderr[-2000:]


LORA_WITH_BASE = {**BERT_LORA, "save": {"mode": "peft_and_unloaded_base"},
                  "load": {"mode": "peft_from_pretrained_saved_base"}}


def test_the_adapter_and_base_pair_round_trips_and_saves_the_adapter_not_to_initialise_again():
    case = case_from_dict({**LORA_WITH_BASE, "adapter": {**BERT_LORA["adapter"], "kwargs": {
        **BERT_LORA["adapter"]["kwargs"], "init_lora_weights": "gaussian"}}})
    record = run_roundtrip(case, "cpu", "fp32", keep_artifacts=True)
    try:
        assert record["status"] == "pass", record["message"]
        artifact = os.path.join(record["artifact_dir"], "artifact")
        assert sorted(os.listdir(artifact)) == sorted([ADAPTER_SUBDIR, BASE_SUBDIR])
        config = peft.PeftConfig.from_pretrained(os.path.join(artifact, ADAPTER_SUBDIR))
        assert config.init_lora_weights is True
    finally:
        import shutil

        shutil.rmtree(record["artifact_dir"], ignore_errors=True)


def _nudge_saved_base(artifact):
    folder = os.path.join(artifact, BASE_SUBDIR)
    path = next(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))
    tensors = load_file(path)
    victim = next(k for k in sorted(tensors) if k.endswith("attention.self.query.weight"))
    noise = torch.randn(tensors[victim].shape, generator=torch.Generator().manual_seed(0))  # a constant shift
    tensors[victim] = tensors[victim] + 0.05 * noise  # would vanish: the input is LayerNorm's (mean 0)
    save_file(tensors, path, metadata={"format": "pt"})


def test_the_load_uses_the_saved_base_not_a_fresh_one():
    """A change to the saved base shows at compare: the loading side serves the base saved beside the adapter."""
    record = run_roundtrip(case_from_dict(LORA_WITH_BASE), "cpu", "fp32", after_save=_nudge_saved_base)
    assert (record["status"], record["stage"]) == ("fail", "compare"), record["message"]


def test_an_adapter_and_base_artifact_without_its_base_fails_at_load():
    import shutil

    record = run_roundtrip(case_from_dict(LORA_WITH_BASE), "cpu", "fp32",
                           after_save=lambda a: shutil.rmtree(os.path.join(a, BASE_SUBDIR)))
    assert (record["status"], record["stage"]) == ("error", "load")
    assert "has no saved base" in record["message"]
