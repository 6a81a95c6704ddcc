"""Data-driven initialisations: a calibration pass over data that sets the adapter (and maybe the base) up.

A case names one with `[adapter] calibration = "<name>"`. PEFT runs some of them before the adapter exists
(CorDA: `preprocess_corda(model, config, run_model)` attaches each target layer's decomposition, which
`get_peft_model` turns into the adapter and a residual base) and some after (EVA:
`initialize_lora_eva_weights(peft_model, dataloader)` sets lora_A from the layer inputs' principal directions
and redistributes the ranks into the config's rank_pattern). `at` says which.

The calibration data are the family's own inputs (`make_inputs`) drawn with CALIBRATION_SEED (+ batch index),
not the inputs the round trip compares: CALIBRATION_BATCHES batches, on the model's device and dtype. The
calibration runs before the simulated training (`fill_trainable`), which adds to what it set.

Each calibration also knows its repro snippet (`repro`): the body of ``def calibrate(model, config, batches)``
in the standalone repro.py (harness/running/repro.py), which provides ``torch`` and ``peft``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

CALIBRATION_SEED = 777
CALIBRATION_BATCHES = 4


@dataclass(frozen=True)
class Calibration:
    name: str
    at: str  # "before_apply" (on the base, with the config) | "after_apply" (on the PeftModel)
    run: Callable  # (model, config, batches) -> None
    description: str
    repro: str  # the body of `def calibrate(model, config, batches)` in a standalone repro.py


def calibration_batches(model) -> list[dict]:
    """CALIBRATION_BATCHES batches of the family's inputs (seed CALIBRATION_SEED + i), as the model takes them."""
    from harness.roundtrip.families import model_inputs

    return [model_inputs(model, seed=CALIBRATION_SEED + i) for i in range(CALIBRATION_BATCHES)]


def _corda(model, config, batches) -> None:
    """preprocess_corda with a run_model that forwards every sample on its own (CorDA's hook takes one sample
    per forward: it squeezes the batch dimension)."""
    import torch
    from peft.tuners.lora.corda import preprocess_corda

    def run_model():
        with torch.no_grad():
            for batch in batches:
                for row in range(next(iter(batch.values())).shape[0]):
                    model(**{k: v[row:row + 1] for k, v in batch.items()})

    preprocess_corda(model, config, run_model=run_model)


def _eva(model, config, batches) -> None:
    """initialize_lora_eva_weights over the batches; token inputs use PEFT's default (attention-mask) input
    preparation, others (pixels, audio) every position of the layer input."""
    from peft import initialize_lora_eva_weights

    options = {} if "input_ids" in batches[0] else {"prepare_model_inputs_fn": None,
                                                    "prepare_layer_inputs_fn": None}
    initialize_lora_eva_weights(model, batches, show_progress_bar=False, **options)


CALIBRATIONS: dict[str, Calibration] = {c.name: c for c in [
    Calibration("corda", "before_apply", _corda,
                "CorDA: preprocess_corda(base, config, run_model) before get_peft_model (it rewrites the base)",
                repro="""
                    from peft.tuners.lora.corda import preprocess_corda

                    def run_model():  # one sample per forward: CorDA's hook squeezes the batch dimension
                        with torch.no_grad():
                            for batch in batches:
                                for row in range(next(iter(batch.values())).shape[0]):
                                    model(**{k: v[row:row + 1] for k, v in batch.items()})

                    preprocess_corda(model, config, run_model=run_model)
                """),
    Calibration("eva", "after_apply", _eva,
                "EVA: initialize_lora_eva_weights(peft_model, batches) after get_peft_model (lora_A, rank_pattern)",
                repro="""
                    options = {} if "input_ids" in batches[0] else {"prepare_model_inputs_fn": None,
                                                                    "prepare_layer_inputs_fn": None}
                    peft.initialize_lora_eva_weights(model, batches, show_progress_bar=False, **options)
                """),
]}


def calibrate(model, case, config, at: str) -> None:
    """Run the case's calibration if it runs at `at` ("before_apply" / "after_apply"); else nothing."""
    calibration = CALIBRATIONS.get(case.adapter_calibration)
    if calibration is not None and calibration.at == at:
        calibration.run(model, config, calibration_batches(model))
