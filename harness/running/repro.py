"""--keep-failed DIR: keep the evidence of every failing cell, and write a standalone repro.py beside it.

For a cell whose status is one of KEEP_STATUSES, the cell's folder (the saved checkpoint under `artifact/`)
moves to DIR/<cell id>/, with `record.json` (the cell's record) and `repro.py`: a script that uses only
torch, transformers, peft and safetensors (no harness import), rebuilds the tiny base from its config with the
same seed, applies the adapter with the same deterministic fill, runs the same save and load, and raises the
same exception (or fails the same check) -- something a maintainer can paste into an upstream issue.
Everything the script needs is written into it as literals, generated from the case and the running versions.
"""
from __future__ import annotations

import json
import os
import re
import shutil

from harness.specs import statuses
from harness.roundtrip import compat
from harness.roundtrip.adapters import FILL_STD, adapter_kwargs
from harness.roundtrip.families import BASE_SEED, FAMILIES
from harness.reporting.report import _json_safe
from harness.roundtrip.cell import LOAD_SEED, SAVE_SEED, TORCH_DTYPES, VACUITY_FACTOR

KEEP_STATUSES = statuses.FAILED  # the libraries did not reproduce the logits (expected or not)


def safe_name(cell_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cell_id).strip("_")


def keep_evidence(record: dict, case, keep_dir: str) -> None:
    """Move the cell's folder into keep_dir (failing cells) or remove it (the others); updates the record."""
    source = record.get("artifact_dir")
    if not source:
        return
    if record["status"] not in KEEP_STATUSES:
        shutil.rmtree(source, ignore_errors=True)
        record.pop("artifact_dir", None)
        return
    dest = os.path.join(keep_dir, safe_name(record["cell_id"]))
    os.makedirs(keep_dir, exist_ok=True)
    if os.path.exists(dest):  # a re-run replaces the evidence of the same cell
        shutil.rmtree(dest)
    shutil.move(source, dest)
    tmp = os.path.join(dest, "tmp")
    if os.path.isdir(tmp) and not os.listdir(tmp):
        os.rmdir(tmp)
    record["artifact_dir"] = os.path.abspath(dest)
    with open(os.path.join(dest, "record.json"), "w", encoding="utf-8") as fh:
        json.dump(_json_safe(record), fh, indent=1)
    try:
        text = repro_script(case, record)
    except NotImplementedError as exc:
        with open(os.path.join(dest, "REPRO_NOT_GENERATED.txt"), "w", encoding="utf-8") as fh:
            fh.write(f"no repro.py for this cell: {exc}\n")
        return
    with open(os.path.join(dest, "repro.py"), "w", encoding="utf-8") as fh:
        fh.write(text)


# --- the generated script -------------------------------------------------------------------------------

_INPUTS = {
    "_token_inputs": '''    ids = torch.randint(0, config.vocab_size, (2, 12), generator=gen)
    ids[:, -1] = config.vocab_size - 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}''',
    "_pixel_inputs": '''    return {"pixel_values": torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=gen)}''',
    "_small_image_inputs": '''    return {"pixel_values": torch.randn(2, config.num_channels, 32, 32, generator=gen)}''',
    "_audio_inputs": '''    return {"input_values": torch.randn(2, 1600, generator=gen)}''',
}

_STEPS = {
    "resize_token_embeddings": '''    torch.manual_seed({base_seed} + {size!r})
    model.resize_token_embeddings({size!r})''',
    "train_parameter": '''    matching = [(n, p) for n, p in model.named_parameters() if re.search({pattern!r}, n)]
    if not matching:
        raise AssertionError("train_parameter: no parameter matches " + {pattern!r})
    if not any(p.requires_grad for _, p in matching):
        raise AssertionError(f"train_parameter: {{len(matching)}} parameter(s) match {pattern!r} "
                             f"({{matching[0][0]}}, ...) but none is trainable")
    with torch.no_grad():
        for _, p in matching:
            if p.requires_grad:
                p.add_(0.05)''',
    "update_running_stats": '''    was_training = model.training
    model.train()
    base_config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    with torch.no_grad():
        for i in range({batches!r}):
            p = next(model.parameters())
            model(**to_device(make_inputs(base_config, seed=100 + i), p.device, p.dtype))
    model.train(was_training)''',
    "add_second_adapter": '''    import copy
    model.add_adapter({adapter!r}, copy.deepcopy(model.peft_config[model.active_adapter]))
    model.set_adapter({adapter!r})
    fill_trainable(model, salt="train-" + {adapter!r})
    if not {activate!r}:
        model.set_adapter("default")''',
}

_SAVE = {
    "peft_safetensors": "model.save_pretrained(artifact, safe_serialization=True, **SAVE_OPTIONS)",
    "peft_pickle": "model.save_pretrained(artifact, safe_serialization=False, **SAVE_OPTIONS)",
    "transformers_save_pretrained": "model.save_pretrained(artifact, **SAVE_OPTIONS)",
    "merged_full": "model.merge_and_unload().save_pretrained(artifact, **SAVE_OPTIONS)",
    "torch_state_dict": '''os.makedirs(artifact, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(artifact, "state_dict.pt"))''',
    "peft_multi_adapter": "model.save_pretrained(artifact, **SAVE_OPTIONS)",
}

_LOAD = {
    "peft_from_pretrained": '''loaded = peft.PeftModel.from_pretrained(load_base(base_dir, LOAD_DEVICE), artifact, **LOAD_OPTIONS)
        result = None''',
    "peft_load_adapter": '''loaded = peft.get_peft_model(load_base(base_dir, LOAD_DEVICE), peft_config())
        name = LOAD_OPTIONS.get("adapter_name", "other")
        result = loaded.load_adapter(artifact, adapter_name=name,
                                     **{k: v for k, v in LOAD_OPTIONS.items() if k != "adapter_name"})
        loaded.set_adapter(name)''',
    "transformers_load_adapter": '''loaded = load_base(base_dir, LOAD_DEVICE)
        result = loaded.load_adapter(artifact, **LOAD_OPTIONS)''',
    "transformers_full": '''loaded, result = MODEL_CLASS.from_pretrained(artifact, output_loading_info=True, **DTYPE_KWARGS,
                                                   **LOAD_OPTIONS)
        loaded = loaded.to(LOAD_DEVICE)''',
    "state_dict_into_peft": '''loaded = peft.get_peft_model(load_base(base_dir, LOAD_DEVICE), peft_config())
        state = torch.load(os.path.join(artifact, "state_dict.pt"), map_location="cpu", weights_only=True)
        result = loaded.load_state_dict(state, strict=LOAD_OPTIONS.get("strict", False))''',
    "state_dict_into_base": '''loaded = load_base(base_dir, LOAD_DEVICE)
        state = torch.load(os.path.join(artifact, "state_dict.pt"), map_location="cpu", weights_only=True)
        result = loaded.load_state_dict(state, strict=LOAD_OPTIONS.get("strict", False))''',
    "peft_multi_adapter": '''dirs = {}
        if os.path.isfile(os.path.join(artifact, "adapter_config.json")):
            dirs["default"] = artifact
        for sub in sorted(os.listdir(artifact)):
            if os.path.isfile(os.path.join(artifact, sub, "adapter_config.json")):
                dirs[sub] = os.path.join(artifact, sub)
        (first, first_dir), *rest = dirs.items()
        loaded = peft.PeftModel.from_pretrained(load_base(base_dir, LOAD_DEVICE), first_dir, adapter_name=first)
        for name, sub in rest:
            loaded.load_adapter(sub, adapter_name=name)
        loaded.set_adapter(LOAD_OPTIONS.get("active", "default"))
        result = None''',
}

_TEMPLATE = '''#!/usr/bin/env python
"""Reproduce {cell_id}: {status_line}

Observed by peft-compat: {observed}
Versions: {versions}
Case file: {case_file}

Standalone: uses only torch, transformers, peft and safetensors. The base model is a tiny random-init
{model_class} built from its config with seed {base_seed}, saved with save_pretrained and loaded back with
from_pretrained(dir), as a user does. Run: python repro.py   (exit 1 and a traceback when the failure
reproduces, exit 0 when the round trip passes on the installed versions)
"""
import os
import re
import sys
import tempfile
import zlib

import torch
import transformers
import peft
import safetensors  # noqa: F401  (safetensors is what save_pretrained writes and from_pretrained reads)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
# every torch.load loads weights only, whatever the environment says (older peft calls it without weights_only)
os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"

CONFIG_CLASS = transformers.{config_class}
MODEL_CLASS = transformers.{model_class}
MODEL_CONFIG = {model_config}
LOAD_KWARGS = {load_kwargs}
DTYPE = torch.{torch_dtype}
DTYPE_KWARGS = {{{dtype_kw!r}: DTYPE}}
SAVE_DEVICE, LOAD_DEVICE = {save_dev!r}, {load_dev!r}
ADAPTER_CONFIG_CLASS = peft.{adapter_type}
ADAPTER_KWARGS = {adapter_kwargs}
SAVE_OPTIONS = {save_options}
LOAD_OPTIONS = {load_options}
TOLERANCE = {tolerance!r}
ADAPTER_KEY_MARKERS = {markers!r}


def make_inputs(config, seed=4321):
    gen = torch.Generator().manual_seed(seed)
{inputs}


def to_device(inputs, device, dtype):
    return {{k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}}


def forward(model, inputs):
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    return (out["logits"] if isinstance(out, dict) else out.logits).detach().float().cpu()


def fill_trainable(model, salt="train"):
    """What training does: every trainable tensor moves, deterministically (seed = crc32 of its name)."""
    names = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                gen = torch.Generator().manual_seed(zlib.crc32(f"{{salt}}:{{name}}".encode()))
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * {fill_std!r}
                param.add_(noise.to(device=param.device, dtype=param.dtype))
                names.append(name)
    return names


def before_adapt(model):
{before_adapt}


def after_adapt(model):
{after_adapt}


def load_base(base_dir, device):
    torch.manual_seed({base_seed})
    model = MODEL_CLASS.from_pretrained(base_dir, **DTYPE_KWARGS, **LOAD_KWARGS)
    before_adapt(model)
    return model.to(device)


def peft_config():
    return ADAPTER_CONFIG_CLASS(**ADAPTER_KWARGS)


def missing_keys(result):
    """missing_keys of whatever the load API returned (IncompatibleKeys, a dict, None)."""
    if result is None:
        return []
    if isinstance(result, dict):
        return list(result.get("missing_keys") or [])
    return list(getattr(result, "missing_keys", None) or [])


def main():
    work = tempfile.mkdtemp(prefix="repro-")
    base_dir, artifact = os.path.join(work, "base"), os.path.join(work, "artifact")
    stage = "build"
    try:
        torch.manual_seed({base_seed})
        MODEL_CLASS(CONFIG_CLASS(**MODEL_CONFIG)).save_pretrained(base_dir)
        model = load_base(base_dir, SAVE_DEVICE)
        inputs = make_inputs(model.config)
        base_logits = forward(model, to_device(inputs, SAVE_DEVICE, DTYPE))

        stage = "adapt"
        torch.manual_seed({save_seed})
        config = peft_config()
{apply}
{fill}
        after_adapt(model)
        adapted = forward(model, to_device(inputs, SAVE_DEVICE, DTYPE))
        effect = (adapted - base_logits).abs().max().item()
        if not effect > {vacuity} * TOLERANCE:
            raise AssertionError(f"vacuous: the adapter changes the logits by at most {{effect:.3g}}")

        stage = "save"
        {save}
        del model

        stage = "load"
        torch.manual_seed({load_seed})
        {load}
        bad = [k for k in missing_keys(result) if not any(m in k for m in ADAPTER_KEY_MARKERS)]
        if bad:
            raise AssertionError(f"the load reported {{len(bad)}} non-adapter key(s) as missing: {{bad[:5]}}")

        stage = "forward"
        logits = forward(loaded, to_device(inputs, LOAD_DEVICE, DTYPE))

        stage = "compare"
        if logits.shape != adapted.shape:
            raise AssertionError(f"logits shape {{tuple(logits.shape)}} after loading, {{tuple(adapted.shape)}} before")
        diff = (logits - adapted).abs().max().item()
        if not diff <= TOLERANCE:
            raise AssertionError(f"the reloaded model does not reproduce the logits: max abs diff {{diff:.3g}} > {{TOLERANCE:.3g}}")
    except Exception:
        print(f"REPRODUCED: the round trip fails at stage {{stage!r}} "
              f"(peft {{peft.__version__}}, transformers {{transformers.__version__}}, torch {{torch.__version__}})",
              file=sys.stderr)
        raise
    print(f"NOT REPRODUCED: the round trip passes (max abs diff {{diff:.3g}}, tolerance {{TOLERANCE:.3g}})")


if __name__ == "__main__":
    main()
'''


def _lit(value) -> str:
    """A Python literal for a JSON-like value (dicts, lists, tuples, numbers, strings, bools, None)."""
    return repr(value)


def _steps_code(case, at: str) -> str:
    from harness.roundtrip.steps import STEPS

    blocks = []
    for spec in case.steps:
        name = spec["name"]
        if name not in STEPS:
            raise NotImplementedError(f"unknown step {name!r}")
        if STEPS[name].at != at:
            continue
        if name not in _STEPS:
            raise NotImplementedError(f"step {name!r} has no repro template")
        params = {k: v for k, v in spec.items() if k != "name"}
        blocks.append(f"    # step: {name} {params}\n" + _STEPS[name].format(base_seed=BASE_SEED, **params))
    return "\n".join(blocks) or "    pass"


def repro_script(case, record: dict) -> str:
    """The text of a standalone repro.py for the cell of `record` (a case on the running versions)."""
    family = FAMILIES[case.family]
    inputs = _INPUTS.get(family.make_inputs.__name__)
    if inputs is None:
        raise NotImplementedError(f"inputs of family {case.family!r} have no repro template")
    if case.save_mode not in _SAVE or case.load_mode not in _LOAD:
        raise NotImplementedError(f"save mode {case.save_mode!r} / load mode {case.load_mode!r} has no repro template")
    device, dtype = record["device"], record["dtype"]
    save_dev = "cuda" if device in ("cuda", "cuda_to_cpu") else "cpu"
    load_dev = "cuda" if device == "cuda" else "cpu"
    if case.adapter_apply == "add_adapter":
        apply = "        model.add_adapter(config)"
    else:
        apply = "        model = peft.get_peft_model(model, config)"
    fill = ('        if not fill_trainable(model):\n            raise AssertionError("the adapter has no trainable tensor")'
            if case.adapter_init == "fill" else "        # the adapter keeps its own (non-identity) init")
    env = record.get("environment") or {}
    status_line = f"{record['status']} at stage {record.get('stage')!r}"
    observed = f"{record.get('exception_type')}: {(record.get('message') or '').strip()}"
    observed = observed[:600].replace('"""', "'''")
    reference = (record.get("known_issue") or {}).get("reference")
    if reference:
        observed += f"\nKnown upstream issue: {reference}"
    dtype_kw = next(iter(compat.dtype_kwargs(None)))
    return _TEMPLATE.format(
        cell_id=record["cell_id"], status_line=status_line, observed=observed,
        versions=", ".join(f"{p} {env.get(p)}" for p in ("peft", "transformers", "torch", "safetensors", "python")),
        case_file=record.get("case_file") or case.path, config_class=family.config_class,
        model_class=family.model_class, model_config=_lit({**family.tiny_config, **case.model_config}),
        load_kwargs=_lit(dict(case.load_kwargs)), torch_dtype=TORCH_DTYPES[dtype], dtype_kw=dtype_kw,
        save_dev=save_dev, load_dev=load_dev, adapter_type=case.adapter_type,
        adapter_kwargs=_lit(adapter_kwargs(case)), save_options=_lit(dict(case.save_options)),
        load_options=_lit(dict(case.load_options)), tolerance=float(record["tolerance"]),
        markers=tuple(compat.ADAPTER_KEY_MARKERS), inputs=inputs, fill_std=FILL_STD,
        before_adapt=_steps_code(case, "before_adapt"), after_adapt=_steps_code(case, "after_adapt"),
        base_seed=BASE_SEED, save_seed=SAVE_SEED, load_seed=LOAD_SEED, apply=apply, fill=fill,
        vacuity=VACUITY_FACTOR, save=_SAVE[case.save_mode], load=_LOAD[case.load_mode],
    )
