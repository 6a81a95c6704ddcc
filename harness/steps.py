"""User steps a case can declare: things users do to the model around adapting it.

`before_adapt` steps change the base and are replayed on the loading side (the user rebuilds the same base);
`after_adapt` steps happen between adapting and saving, on the saving side only (like training).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .errors import CheckFailed


class StepError(CheckFailed):
    """A step could not do what the user does: the case's intent fails (status "fail")."""


@dataclass(frozen=True)
class Step:
    name: str
    at: str  # "before_adapt" | "after_adapt"
    params: dict  # parameter name -> python type
    run: Callable  # (model, **params) -> None
    description: str


def _resize_token_embeddings(model, size: int) -> None:
    import torch

    from .families import BASE_SEED

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


STEPS: dict[str, Step] = {s.name: s for s in [
    Step("resize_token_embeddings", "before_adapt", {"size": int}, _resize_token_embeddings,
         "model.resize_token_embeddings(size), replayed identically on the loading side"),
    Step("train_parameter", "after_adapt", {"pattern": str}, _train_parameter,
         "change parameters matching a regex as training would; fails if none of them is trainable"),
]}


def run_steps(model, steps, at: str) -> None:
    for spec in steps:
        step = STEPS[spec["name"]]
        if step.at == at:
            step.run(model, **{k: v for k, v in spec.items() if k != "name"})
