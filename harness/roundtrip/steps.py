"""User steps a case can declare: things users do to the model around adapting it.

`before_adapt` steps change the base and are replayed on the loading side (the user rebuilds the same base);
`after_adapt` steps happen between adapting and saving, on the saving side only (like training).

Each step also knows its repro snippet (`repro`): the same thing written with torch / transformers / peft
only, for the standalone repro.py of --keep-failed (harness/running/repro.py). A snippet is the body of
``def step_<name>(model, <its params>)`` in that script, indented as you like; the script provides ``torch``,
``re``, ``BASE_SEED``, ``make_inputs(config, seed)``, ``to_device(inputs, device, dtype)`` and
``fill_trainable(model, salt)``, which do what their namesakes in the harness do. A step that fails raises
AssertionError there (StepError here).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from harness.roundtrip.errors import CheckFailed


class StepError(CheckFailed):
    """A step could not do what the user does: the case's intent fails (status "fail")."""


@dataclass(frozen=True)
class Step:
    name: str
    at: str  # "before_adapt" | "after_adapt"
    params: dict  # parameter name -> python type
    run: Callable  # (model, **params) -> None
    description: str
    repro: str  # the body of `def step_<name>(model, <params>)` in a standalone repro.py (see above)


def _resize_token_embeddings(model, size: int) -> None:
    import torch

    from harness.roundtrip.families import BASE_SEED

    torch.manual_seed(BASE_SEED + size)  # new rows are random: same on both sides of the round trip
    model.resize_token_embeddings(size)


def _train_parameter(model, pattern: str) -> None:
    """Change the parameters whose name matches regex `pattern` as training would; they must be trainable."""
    regex = re.compile(pattern)
    matching = [(n, p) for n, p in model.named_parameters() if regex.search(n)]
    if not matching:
        raise StepError(f"train_parameter: no parameter matches {pattern!r}")
    trainable = [n for n, p in matching if p.requires_grad]
    if not trainable:
        raise StepError(
            f"train_parameter: {len(matching)} parameter(s) match {pattern!r} ({matching[0][0]}, ...) but none is "
            "trainable: the adapter config does not let training change them, so they cannot be saved")
    import torch

    with torch.no_grad():
        for n, p in matching:
            if p.requires_grad:
                p.add_(0.05)  # on top of the general fill: a visible, deliberate change of exactly these values


def _update_running_stats(model, batches: int) -> None:
    """Forward passes in train mode, without gradients: BatchNorm running statistics move as in training."""
    import torch

    from harness.roundtrip.families import family_for_config, make_inputs

    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    family = family_for_config(config)
    buffers = [n for n, _ in model.named_buffers() if "running_mean" in n]
    if not buffers:
        raise StepError("update_running_stats: the model has no running statistics (no BatchNorm)")
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i in range(batches):
            dtype = next(model.parameters()).dtype
            device = next(model.parameters()).device
            inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
                      for k, v in make_inputs(family, config, seed=100 + i).items()}
            model(**inputs)
    model.train(was_training)


def _add_second_adapter(model, adapter: str, activate: bool) -> None:
    """PeftModel.add_adapter(name, <same config>) with its own deterministic fill; optionally activate it."""
    import copy

    from harness.roundtrip.adapters import fill_trainable

    if not hasattr(model, "peft_config"):
        raise StepError("add_second_adapter: the model is not a PeftModel")
    config = copy.deepcopy(model.peft_config[model.active_adapter])
    model.add_adapter(adapter, config)
    model.set_adapter(adapter)  # makes its tensors trainable, so the fill reaches them
    fill_trainable(model, salt=f"train-{adapter}")
    if not activate:
        model.set_adapter("default")


def _add_adapter_of_type(model, adapter: str, config_type: str) -> None:
    """PeftMixedModel.add_adapter(name, <another PEFT method> on the same target modules), its own fill, then
    every adapter active together (set_adapter with the list of names)."""
    import peft

    from harness.roundtrip.adapters import fill_trainable

    if not isinstance(model, getattr(peft, "PeftMixedModel", ())):
        raise StepError("add_adapter_of_type: the model is not a PeftMixedModel (adapter.apply = get_peft_model_mixed)")
    first = model.peft_config[model.active_adapters[0]]
    model.add_adapter(adapter, getattr(peft, config_type)(target_modules=sorted(first.target_modules)))
    model.set_adapter(adapter)  # makes its tensors (only) trainable, so the fill reaches them
    fill_trainable(model, salt=f"train-{adapter}")
    model.set_adapter(list(model.peft_config))


STEPS: dict[str, Step] = {s.name: s for s in [
    Step("resize_token_embeddings", "before_adapt", {"size": int}, _resize_token_embeddings,
         "model.resize_token_embeddings(size), replayed identically on the loading side",
         repro="""
             torch.manual_seed(BASE_SEED + size)  # new rows are random: same on both sides of the round trip
             model.resize_token_embeddings(size)
         """),
    Step("train_parameter", "after_adapt", {"pattern": str}, _train_parameter,
         "change parameters matching a regex as training would; fails if none of them is trainable",
         repro="""
             matching = [(n, p) for n, p in model.named_parameters() if re.search(pattern, n)]
             if not matching:
                 raise AssertionError(f"train_parameter: no parameter matches {pattern!r}")
             if not any(p.requires_grad for _, p in matching):
                 raise AssertionError(f"train_parameter: {len(matching)} parameter(s) match {pattern!r} "
                                      f"({matching[0][0]}, ...) but none is trainable")
             with torch.no_grad():
                 for _, p in matching:
                     if p.requires_grad:
                         p.add_(0.05)
         """),
    Step("update_running_stats", "after_adapt", {"batches": int}, _update_running_stats,
         "forward passes in train mode so that BatchNorm running statistics change as in training",
         repro="""
             config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
             if not any("running_mean" in n for n, _ in model.named_buffers()):
                 raise AssertionError("update_running_stats: the model has no running statistics (no BatchNorm)")
             was_training = model.training
             model.train()
             with torch.no_grad():
                 for i in range(batches):
                     p = next(model.parameters())
                     model(**to_device(make_inputs(config, seed=100 + i), p.device, p.dtype))
             model.train(was_training)
         """),
    Step("add_second_adapter", "after_adapt", {"adapter": str, "activate": bool}, _add_second_adapter,
         "add a second adapter with the same config and its own values; activate=true makes it the one compared",
         repro="""
             import copy

             if not hasattr(model, "peft_config"):
                 raise AssertionError("add_second_adapter: the model is not a PeftModel")
             model.add_adapter(adapter, copy.deepcopy(model.peft_config[model.active_adapter]))
             model.set_adapter(adapter)  # makes its tensors trainable, so the fill reaches them
             fill_trainable(model, salt=f"train-{adapter}")
             if not activate:
                 model.set_adapter("default")
         """),
    Step("add_adapter_of_type", "after_adapt", {"adapter": str, "config_type": str}, _add_adapter_of_type,
         "PeftMixedModel: add an adapter of another PEFT method (config_type) on the same targets, all active",
         repro="""
             first = model.peft_config[model.active_adapters[0]]
             model.add_adapter(adapter, getattr(peft, config_type)(target_modules=sorted(first.target_modules)))
             model.set_adapter(adapter)  # makes its tensors (only) trainable, so the fill reaches them
             fill_trainable(model, salt=f"train-{adapter}")
             model.set_adapter(list(model.peft_config))
         """),
]}


def run_steps(model, steps, at: str) -> None:
    for spec in steps:
        step = STEPS[spec["name"]]
        if step.at == at:
            step.run(model, **{k: v for k, v in spec.items() if k != "name"})
