"""Read side of the cross-version table: this release loads what another release wrote.

For one artifact (a writer's cell) and the reader's case of the same id:
  build    the writer's base checkpoint loads here (from_pretrained, the case's load kwargs and steps) and
           computes the writer's base logits; otherwise the cell is "base-incompatible": the model itself
           does not carry over, which says nothing about the adapter (reported, never hidden);
  load     the case's load mode reads what the writer saved, onto that base;
  forward, compare   the writer's logits before saving must come out again, within the cell's tolerance.
The writer proved its adapter moves the logits by more than ten tolerances, so a reader that drops a config
field, a tensor or a module and computes something else fails at compare; it never passes.

Releases change kernels: in bf16 / fp16 the same base computes logits a few units in the last place apart on
two releases (bf16: 1 ulp is 0.0078 at a logit of 1.5). A read therefore measures the base's own drift first
and, when it is not zero, compares within max(the cell's tolerance, 4 x that drift, 2 ulps of the dtype at
the largest logit); fp32 keeps its strict tolerance (no ulp term), and a base that computes exactly the
writer's logits (the same kernels, as in a read of the same release) widens nothing. A base drift above ten tolerances is a different model
(base-incompatible), and a bound that would reach a quarter of the writer's adapter effect could hide a lost
adapter: such a read cannot be judged and is base-incompatible too, with the figures in its message.
The record is raw (pass / fail / error / base-incompatible / skipped / not-applicable) with a `writer` block;
the running layer classifies it.
"""
from __future__ import annotations

import dataclasses
import os

from harness.artifacts.store import read_manifest, verify
from harness.roundtrip.cell import (LoadContext, Stages, applicability, base_key, forward_logits, inputs_digest,
                                    inputs_on, load_and_compare, load_base, max_abs_diff, new_record, record_failure,
                                    torch_dtype)
from harness.roundtrip.errors import CheckFailed
from harness.roundtrip.modes import LOAD_MODES


class BaseIncompatible(CheckFailed):
    """The writer's base checkpoint does not load here, or computes other logits here."""


DRIFT_FACTOR = 4  # the read's bound grows by this many times the base's own drift between the two releases
ULPS = 2  # and, in bf16 / fp16, by this many units in the last place at the largest logit
RELATIVE_EPS = {"fp32": 0.0, "bf16": 2.0 ** -7, "fp16": 2.0 ** -10}
BASE_LIMIT = 10  # a base drift above this many tolerances: another model, not numerics
JUDGE_LIMIT = 4  # the bound must stay below the writer's adapter effect / this, or a lost adapter could pass


def cross_tolerance(tolerance: float, dtype: str, base_drift: float, largest_logit: float) -> float:
    """The bound a cross-version read compares within (see the module's docstring). A base that computes
    exactly the writer's logits here (the same kernels: a read of the same release, say) widens nothing."""
    if base_drift == 0:
        return tolerance
    return max(tolerance, DRIFT_FACTOR * base_drift, ULPS * RELATIVE_EPS[dtype] * largest_logit)


def writer_block(manifest: dict) -> dict:
    """What a cross-version record says about its writer: versions and its own verdict of the cell."""
    return {**manifest["writer"], "verdict": manifest["writer_verdict"]}


def dropped_config_fields(manifest: dict, adapter_type: str) -> list[str] | None:
    """Keys of the saved adapter_config.json that the reader's config class does not know: the reader drops
    or rejects them. None when the reader's peft has no such class."""
    import peft

    config_cls = getattr(peft, adapter_type, None)
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        return None
    known = {f.name for f in dataclasses.fields(config_cls)}
    saved = set().union(*manifest["adapter_config_keys"].values()) if manifest["adapter_config_keys"] else set()
    return sorted(saved - known)


def read_cell(case, cell_dir: str, *, manifest: dict | None = None, on_stage=None) -> dict:
    """Read one artifact (a cell folder of a writer) with the reader's case `case` and return the raw record."""
    manifest = manifest or read_manifest(cell_dir)
    writer_dir = os.path.dirname(os.path.dirname(cell_dir))
    device, dtype = manifest["device"], manifest["dtype"]
    record = new_record(case, device, dtype)
    record["writer"] = writer_block(manifest)
    skip = applicability(case, device)
    if skip:
        record["status"], record["message"] = skip
        return record
    # a load that builds its config from the case never meets the saved fields: nothing is dropped
    record["dropped_config_fields"] = (dropped_config_fields(manifest, case.adapter_type)
                                       if LOAD_MODES[case.load_mode].reads_saved_config else [])
    run = Stages(record, on_stage)
    try:
        _read_stages(run, case, manifest, writer_dir)
        record["stage"] = None
        record["status"] = "pass"
    except BaseIncompatible as exc:
        record["status"], record["exception_type"], record["message"] = "base-incompatible", "BaseIncompatible", str(exc)
    except Exception as exc:  # any library exception is the cell's verdict, with its stage
        record_failure(record, exc)
    return record


# This process's verdicts on writers' bases: (base key, inputs, threads) -> the base's logits here, or the
# message of why it does not load. A writer's base is shared by every cell of the writer that uses it, so a
# reader loads it and computes its logits once per worker, not once per cell; the load stage still loads it
# (a deep copy, harness.roundtrip.families.LoadedBases). Only kept for a base that LoadedBases proved
# reusable (two loads agree) or that failed twice in the same way: otherwise every read loads it afresh.
_BASE_VERDICTS: dict = {}


def base_logits_here(case, base_dir: str, device: str, dtype: str, inputs: dict):
    """The logits of the writer's base loaded here (load_base: from_pretrained, load kwargs, steps) on the
    writer's inputs; raises BaseIncompatible when it does not load. Computed once per worker for a base that is
    proven reusable (see _BASE_VERDICTS); the load's warnings are raised again for each read, as a load would."""
    import torch

    from harness.roundtrip.families import LOADED_BASES, capture_call

    key = base_key(case, base_dir, device, dtype)
    verdict_key = (key, inputs_digest(inputs), torch.get_num_threads())
    cached = None if LOADED_BASES.no_reuse() else _BASE_VERDICTS.get(verdict_key)
    if cached is not None and cached[0] == "logits" and LOADED_BASES.replay(key):
        return cached[1].clone()
    if cached is not None and cached[0] == "error":
        cached[2].replay()
        raise BaseIncompatible(cached[1])

    def logits():
        base = load_base(case, base_dir, device, dtype, key=key)
        return forward_logits(base, inputs_on(inputs, device, torch_dtype(dtype)))

    result, error, captured = capture_call(logits)
    captured.replay()
    if error is None:
        if LOADED_BASES.reusable(key):
            _BASE_VERDICTS[verdict_key] = ("logits", result.clone())
        return result
    message = f"the writer's base checkpoint does not load here: {type(error).__name__}: {str(error)[:500]}"
    if LOADED_BASES.no_reuse():
        raise BaseIncompatible(message) from error
    _, again, captured_again = capture_call(logits)  # the same failure twice: the same for every read here
    if (again is not None and (type(again), str(again)) == (type(error), str(error))
            and captured_again.signature() == captured.signature()):
        _BASE_VERDICTS[verdict_key] = ("error", message, captured)
    raise BaseIncompatible(message) from error


def _read_stages(run: Stages, case, manifest: dict, writer_dir: str) -> None:
    import torch
    from safetensors.torch import load_file

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    record = run.record
    load_dev = "cuda" if record["device"] == "cuda" else "cpu"
    base_dir = os.path.join(writer_dir, manifest["base"])
    with run.stage("build"):
        bad = verify(writer_dir, manifest)
        if bad:
            raise RuntimeError(f"the artifact of {manifest['cell_id']} in {writer_dir} is damaged: {', '.join(bad[:5])}")
        tensors = load_file(os.path.join(writer_dir, manifest["tensors"]))
        inputs = {k[len("input."):]: v for k, v in tensors.items() if k.startswith("input.")}
        base_logits = base_logits_here(case, base_dir, load_dev, record["dtype"], inputs)
        drift = record["base_drift"] = max_abs_diff(base_logits, tensors["logits.base"])
        tol = record["tolerance"]
        if not drift <= BASE_LIMIT * tol:
            raise BaseIncompatible(f"the writer's base checkpoint loads here but computes other logits (max abs "
                                   f"diff {drift:.3g} > {BASE_LIMIT} x tolerance {tol:.3g}): not the adapter's doing")
        bound = cross_tolerance(tol, record["dtype"], drift, float(tensors["logits.adapted"].abs().max()))
        effect = (manifest["writer_verdict"].get("adapter_effect") or 0.0)
        if bound > tol:
            if not bound * JUDGE_LIMIT < effect:
                raise BaseIncompatible(f"the base computes logits {drift:.3g} apart on the two releases; the bound "
                                       f"that allows for it ({bound:.3g}) is too close to the adapter's effect "
                                       f"({effect:.3g}) to tell a lost adapter: this read cannot be judged")
            record["tolerance"] = bound
            record["tolerance_reason"] = (f"across releases: max({tol:.3g}, {DRIFT_FACTOR} x base drift {drift:.3g}, "
                                          f"{ULPS} ulps of {record['dtype']} at the largest logit)")
    ctx = LoadContext(case, base_dir, load_dev, record["dtype"])
    load_and_compare(run, ctx, os.path.join(writer_dir, manifest["saved"]), inputs, tensors["logits.adapted"])
