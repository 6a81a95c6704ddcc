"""run_roundtrip(case, device, dtype) -> record: the save -> load -> forward round trip of one cell.

Stages, in order: build (base checkpoint, base logits), adapt (apply, make non-identity, user steps, check
the adapter changes the logits), save, load (fresh base, different random adapter values, load), forward,
compare. The record says which stage failed, with the exception, and what was measured on the way.
No policy: the verdict is what happened (pass, fail, error, skipped, not-applicable); the known-issues table
is applied by the running layer (harness.running.cells.run_cell). Nothing here imports pytest.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from harness.roundtrip import compat
from harness.roundtrip.adapters import apply_adapter, build_config, fill_trainable
from harness.roundtrip.environment import environment
from harness.roundtrip.errors import CheckFailed
from harness.roundtrip.families import (BASE_SEED, FAMILIES, LOADED_BASES, BaseCheckpoints, checkpoint_fingerprint,
                                       inputs_on, make_inputs, reuse_compiled_templates)
from harness.roundtrip.modes import (BASE_DTYPE_OPTION, LOAD_MODES, SAVE_MODES, check_artifact,
                                     save_initial_adapter)
from harness.roundtrip.steps import STEPS, run_steps

SAVE_SEED = 0
LOAD_SEED = 54321  # the loading side draws its adapter from another seed than the saving side
VACUITY_FACTOR = 10  # the adapter must move the logits by at least this many tolerances

# Max abs difference allowed between the logits before saving and after loading, per (device, dtype).
TOLERANCES = {
    ("cpu", "fp32"): 1e-5, ("cuda", "fp32"): 1e-4, ("cuda_to_cpu", "fp32"): 1e-4,
    ("cpu", "bf16"): 5e-3, ("cuda", "bf16"): 1e-2, ("cuda_to_cpu", "bf16"): 5e-2,
    ("cpu", "fp16"): 1e-3, ("cuda", "fp16"): 1e-3, ("cuda_to_cpu", "fp16"): 5e-3,
}
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
LOGGERS = ("transformers", "peft", "accelerate", "huggingface_hub")
MESSAGE_LIMIT = 4000


def cell_id(case_id: str, device: str, dtype: str) -> str:
    return f"{case_id}[{device}-{dtype}]"


def tolerance_for(case, device: str, dtype: str) -> float:
    return float(case.tolerance.get(dtype, TOLERANCES[(device, dtype)]))


def new_record(case, device: str, dtype: str) -> dict:
    return {
        "cell_id": cell_id(case.id, device, dtype), "case_id": case.id, "case_file": case.path,
        "family": case.family, "adapter": case.adapter_type, "method": case.method, "apply": case.adapter_apply,
        "save_mode": case.save_mode, "load_mode": case.load_mode, "tags": list(case.tags),
        "references": list(case.references), "device": device, "dtype": dtype,
        "status": None, "stage": None, "exception_type": None, "message": None, "traceback": None,
        "max_abs_diff": None, "tolerance": tolerance_for(case, device, dtype),
        "tolerance_reason": case.tolerance.get("reason"), "adapter_effect": None, "vacuity_threshold": None,
        "seconds": {}, "warnings": [], "missing_keys": None, "unexpected_keys": None, "non_adapter_keys": None,
        "known_issue": None, "environment": environment(device),
    }


class _LogCapture(logging.Handler):
    def __init__(self, sink):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record):
        self.sink.append(("log:" + record.name, record.getMessage()))


@contextmanager
def _captured_warnings(record: dict, stage: str):
    sink: list = []
    handler = _LogCapture(sink)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:  # library messages go into the record, not onto the terminal
        logger.handlers, logger.propagate = [handler], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate
        sink += [(w.category.__name__, str(w.message)) for w in caught]
        seen = {(w["category"], w["message"]) for w in record["warnings"]}
        for category, message in sink:
            if (category, message[:MESSAGE_LIMIT]) not in seen and "deprecat" not in category.lower():
                seen.add((category, message[:MESSAGE_LIMIT]))
                record["warnings"].append({"stage": stage, "category": category, "message": message[:MESSAGE_LIMIT]})


class Stages:
    """Runs the stages of one cell; the first failure ends the cell with that stage in the record."""

    def __init__(self, record: dict, on_stage=None):
        self.record = record
        self.on_stage = on_stage

    @contextmanager
    def stage(self, name: str):
        self.record["stage"] = name
        if self.on_stage is not None:  # crash isolation streams the current stage to its parent
            self.on_stage(name)
        start = time.perf_counter()
        try:
            with _captured_warnings(self.record, name):
                yield
        finally:
            self.record["seconds"][name] = round(time.perf_counter() - start, 6)


def torch_dtype(dtype: str):
    import torch

    return getattr(torch, TORCH_DTYPES[dtype])


def forward_logits(model, inputs):
    import torch

    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    logits = out["logits"] if isinstance(out, dict) else out.logits
    return logits.detach().float().cpu()


def adapted_inputs(case, inputs: dict) -> dict:
    """`inputs` plus the case's `adapter.forward_kwargs`, for the adapted and the reloaded model only (the base
    rejects them): a list of integers becomes an int64 tensor (task_ids of POLY / multitask prompt tuning),
    "@name" a copy of the family input `name` (CPT's forward requires labels)."""
    import torch

    extra = {}
    for name, value in case.forward_kwargs.items():
        if isinstance(value, str):
            source = value[1:]
            if source not in inputs:
                raise CheckFailed(f"adapter.forward_kwargs.{name}: the family has no input {source!r} "
                                  f"(it has: {', '.join(sorted(inputs))})")
            extra[name] = inputs[source].clone()
        else:
            extra[name] = torch.tensor(value, dtype=torch.long)
    return {**inputs, **extra}


@dataclass
class LoadContext:
    """What a load mode may ask for: a fresh base as the user would load it, and the adapter config."""
    case: object
    base_dir: str
    device: str
    dtype: str

    def dtype_kwargs(self) -> dict:
        return compat.dtype_kwargs(torch_dtype(self.dtype))

    def model_class(self):
        return FAMILIES[self.case.family].classes()[1]

    def fresh_base(self):
        return load_base(self.case, self.base_dir, self.device, self.dtype)

    def fresh_config(self):
        return build_config(self.case)


def load_base(case, base_dir: str, device: str, dtype: str, *, key=None):
    """from_pretrained(base_dir) as the user does it, then the case's before_adapt steps; seeded, so that
    heads created at load time (ignore_mismatched_sizes) and resized rows are the same on both sides.
    Served by this process's LOADED_BASES: a deep copy of a base loaded once and proven equal to a fresh load
    (else a fresh load; see harness.roundtrip.families)."""
    return LOADED_BASES.load(key or base_key(case, base_dir, device, dtype),
                             lambda: fresh_load_base(case, base_dir, device, dtype))


def base_key(case, base_dir: str, device: str, dtype: str) -> tuple:
    """Everything a loaded base depends on: the checkpoint's content, the class, dtype, device, the case's
    load kwargs and its before_adapt steps."""
    steps = [s for s in case.steps if STEPS[s["name"]].at == "before_adapt"]
    return (checkpoint_fingerprint(base_dir), FAMILIES[case.family].model_class, dtype, device,
            json.dumps(case.load_kwargs, sort_keys=True, default=repr), json.dumps(steps, sort_keys=True, default=repr))


def fresh_load_base(case, base_dir: str, device: str, dtype: str):
    """load_base without the cache: what every call did before it, and what it still does for a base that two
    loads do not reproduce."""
    import torch

    torch.manual_seed(BASE_SEED)
    model_cls = FAMILIES[case.family].classes()[1]
    model = model_cls.from_pretrained(base_dir, **compat.dtype_kwargs(torch_dtype(dtype)), **case.load_kwargs)
    run_steps(model, case.steps, "before_adapt")
    return model.to(device)


# A reused base's inputs (make_inputs of its config) and its logits on them, with the same number of threads:
# made once per worker, not once per cell (LOADED_BASES proved every copy equal to a fresh load, config
# included). Any other base makes them anew.
_BASE_LOGITS: dict = {}


def inputs_digest(inputs: dict) -> str:
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(inputs):
        tensor = inputs[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_inputs_and_logits(key, family, model, device: str, dtype: str):
    """(inputs, forward_logits of `model` on them) for `model`, a base just given by load_base under `key`."""
    import torch

    def make():
        inputs = make_inputs(family, model.config)
        return inputs, forward_logits(model, inputs_on(inputs, device, torch_dtype(dtype)))

    if not LOADED_BASES.reusable(key):
        return make()
    cache_key = (key, family.name, torch.get_num_threads())
    if cache_key not in _BASE_LOGITS:
        _BASE_LOGITS[cache_key] = make()
    model.eval()  # as forward_logits leaves it
    inputs, logits = _BASE_LOGITS[cache_key]
    return {k: v.clone() for k, v in inputs.items()}, logits.clone()


def applicability(case, device: str) -> tuple[str, str] | None:
    """(status, reason) when the cell cannot run here, else None."""
    unmet = compat.unmet_requirements(case.requires)
    if unmet:
        return "not-applicable", "requires " + "; ".join(unmet)
    import peft

    if not hasattr(peft, case.adapter_type):
        return "not-applicable", f"peft {compat.installed_version('peft')} has no {case.adapter_type}"
    if device in ("cuda", "cuda_to_cpu"):
        import torch

        if not torch.cuda.is_available():
            return "skipped", "CUDA is not available here (torch.cuda.is_available() is False)"
    return None


def _fail(message: str):
    raise CheckFailed(message)


def check_load_keys(record: dict, api_result) -> None:
    missing, unexpected = compat.load_result_keys(api_result)
    record["missing_keys"], record["unexpected_keys"] = missing, unexpected
    if missing is None and unexpected is None:
        return
    non_adapter = sorted(k for k in (missing or []) + (unexpected or []) if not compat.is_adapter_key(k))
    record["non_adapter_keys"] = non_adapter
    bad_missing = [k for k in (missing or []) if not compat.is_adapter_key(k)]
    if bad_missing:
        _fail(f"the load reported {len(bad_missing)} non-adapter key(s) as missing (only adapter keys may be "
              f"reported): {', '.join(bad_missing[:5])}{' ...' if len(bad_missing) > 5 else ''}")


def run_roundtrip(case, device: str = "cpu", dtype: str = "fp32", *, bases: BaseCheckpoints | None = None,
                  workdir: str | None = None, keep_artifacts: bool = False,
                  after_save=None, after_load=None, on_stage=None, export: bool = False) -> dict:
    """Run one cell and return its raw record (a plain dict that the report schema describes).

    `after_save(artifact_path)` and `after_load(model)` are fault-injection seams for the harness's own tests
    (corrupt a file, nudge a weight): they let a test prove that a check fails, with the real libraries.
    `on_stage(name)` is called as each stage starts (harness/isolation.py streams it to the parent process).
    `export=True`: once the save stage is done, what a reader of another release needs goes to
    <workdir>/export/ (see export_for_readers); pass a `workdir` that the caller keeps."""
    record = new_record(case, device, dtype)
    skip = applicability(case, device)
    if skip:
        record["status"], record["message"] = skip
        return record
    own_bases = bases is None  # then the base checkpoint is this cell's alone: removed with it
    bases = BaseCheckpoints() if own_bases else bases
    own_workdir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="peft-compat-cell-")
    try:
        _run_stages(case, device, dtype, record, bases, workdir, after_save, after_load, on_stage, export)
    finally:
        if own_bases:
            bases.remove()
        if own_workdir and not keep_artifacts:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            record["artifact_dir"] = workdir
    return record


def _run_stages(case, device, dtype, record, bases, workdir, after_save, after_load, on_stage=None,
                export=False) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    reuse_compiled_templates()  # the model card's template, compiled once per process (see families.py)
    save_dev = "cuda" if device in ("cuda", "cuda_to_cpu") else "cpu"
    load_dev = "cuda" if device == "cuda" else "cpu"
    family, tol = FAMILIES[case.family], record["tolerance"]
    threshold = record["vacuity_threshold"] = tol * VACUITY_FACTOR
    save_mode = SAVE_MODES[case.save_mode]
    artifact = os.path.join(workdir, "artifact")
    run = Stages(record, on_stage)
    try:
        with run.stage("build"):
            base_dir = bases.get(family, case.model_config)
            key = base_key(case, base_dir, save_dev, dtype)
            model = load_base(case, base_dir, save_dev, dtype, key=key)
            inputs, base_logits = base_inputs_and_logits(key, family, model, save_dev, dtype)
        with run.stage("adapt"):
            torch.manual_seed(SAVE_SEED)
            model = apply_adapter(model, case)
            save_options = dict(case.save_options)
            if save_mode.needs_initial:  # before training: what a conversion on save starts from
                save_options["path_initial_model_for_weight_conversion"] = save_initial_adapter(
                    model, os.path.join(workdir, "initial-adapter"))
            if case.adapter_init == "fill":
                if not fill_trainable(model):
                    _fail("the adapter has no trainable tensor: nothing to save")
            run_steps(model, case.steps, "after_adapt")
            adapted = inputs_on(adapted_inputs(case, inputs), save_dev, torch_dtype(dtype))
            adapted_logits = forward_logits(model, adapted)
            effect = record["adapter_effect"] = adapter_effect(adapted_logits, base_logits)
            if not effect > threshold:
                _fail(f"vacuous: the adapter changes the logits by at most {effect:.3g}, not more than "
                      f"{threshold:.3g} ({VACUITY_FACTOR} x tolerance): the round trip would prove nothing")
        with run.stage("save"):
            save_mode.save(model, artifact, save_options)
            del model
            if after_save:
                after_save(artifact)
        if export:
            export_for_readers(workdir, base_dir, inputs, base_logits, adapted_logits)
        ctx = LoadContext(case, base_dir, load_dev, dtype)
        load_and_compare(run, ctx, artifact, inputs, adapted_logits, after_load)
        record["stage"] = None
        record["status"] = "pass"
    except Exception as exc:  # any library exception is the cell's verdict, with its stage
        record_failure(record, exc)


def record_failure(record: dict, exc: Exception) -> None:
    """A harness check that failed is "fail"; any exception a library raised is "error", with its type."""
    if isinstance(exc, CheckFailed):
        record["status"], record["exception_type"], record["message"] = "fail", "CheckFailed", str(exc)
        return
    record["status"], record["exception_type"] = "error", f"{type(exc).__module__}.{type(exc).__qualname__}"
    record["message"] = str(exc)[:MESSAGE_LIMIT]
    record["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])[-MESSAGE_LIMIT:]


def load_and_compare(run: Stages, ctx: LoadContext, artifact: str, inputs: dict, expected, after_load=None) -> None:
    """The load, forward and compare stages: what the case's load mode makes of `artifact` on a fresh base
    (ctx) must reproduce `expected` (the logits before saving) within the cell's tolerance. The round trip
    and a cross-version read (harness.artifacts.read) share it. Raises on the first failure."""
    import torch

    record, case = run.record, ctx.case
    load_mode = LOAD_MODES[case.load_mode]
    options = dict(case.load_options)
    base_dtype = options.pop(BASE_DTYPE_OPTION, None)
    if base_dtype is not None:  # the loading side's base in another dtype than the saving side's
        ctx = dataclasses.replace(ctx, dtype=base_dtype)
    with run.stage("load"):
        check_artifact(load_mode.consumes, artifact)
        torch.manual_seed(LOAD_SEED)
        outcome = load_mode.load(ctx, artifact, options)
        check_load_keys(record, outcome.api_result)
        if after_load:
            after_load(outcome.model)
    with run.stage("forward"):
        logits = forward_logits(outcome.model, inputs_on(adapted_inputs(case, inputs), ctx.device,
                                                         torch_dtype(ctx.dtype)))
    with run.stage("compare"):
        if logits.shape != expected.shape:
            _fail(f"logits shape {tuple(logits.shape)} after loading, {tuple(expected.shape)} before saving")
        diff = record["max_abs_diff"] = max_abs_diff(logits, expected)
        tol = record["tolerance"]
        if not diff <= tol:
            _fail(f"the reloaded model does not reproduce the logits: max abs diff {diff:.3g} > tolerance "
                  f"{tol:.3g} ({record['device']}, {record['dtype']})")


EXPORT_DIR = "export"  # in a cell's folder: what a reader of another release needs, besides the saved artifact
EXPORT_TENSORS = "tensors.safetensors"
EXPORT_BASE = "base"


def export_for_readers(workdir: str, base_dir: str, inputs: dict, base_logits, adapted_logits) -> None:
    """After the save stage: a copy of the base checkpoint the cell loaded, and the inputs and the logits of
    the base and of the adapted model before saving, as safetensors. harness.artifacts.write turns this and
    the saved artifact into an artifact another release can read."""
    from safetensors.torch import save_file

    out = os.path.join(workdir, EXPORT_DIR)
    os.makedirs(out, exist_ok=True)
    shutil.copytree(base_dir, os.path.join(out, EXPORT_BASE))
    tensors = {f"input.{k}": v.contiguous() for k, v in inputs.items()}
    tensors.update({"logits.base": base_logits.contiguous(), "logits.adapted": adapted_logits.contiguous()})
    save_file(tensors, os.path.join(out, EXPORT_TENSORS))


def adapter_effect(adapted, base) -> float:
    """How far the adapter moves the logits: max abs difference from the base's. A prompt-learning adapter that
    prepends virtual tokens to a causal LM's sequence (multitask prompt tuning, CPT) adds their positions to the
    logits: then the positions of the real tokens (the last ones) are compared, so that a different length alone
    never counts as an effect."""
    if (adapted.dim() == base.dim() == 3 and adapted.shape[0] == base.shape[0] and adapted.shape[2] == base.shape[2]
            and adapted.shape[1] > base.shape[1]):
        adapted = adapted[:, adapted.shape[1] - base.shape[1]:]
    return max_abs_diff(adapted, base)


def max_abs_diff(a, b) -> float:
    import torch

    if a.shape != b.shape:
        return float("inf")
    diff = (a - b).abs()
    if torch.isnan(diff).any():
        return float("nan")
    return float(diff.max())
