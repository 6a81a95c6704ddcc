"""Save modes and load modes: small named functions in two registries.

A save mode writes an artifact of one kind ("adapter_dir", "full_model_dir" or "state_dict_file"); a load
mode consumes one kind. Case validation checks that the two fit and that the save mode fits how the adapter
was applied. Everything a checkpoint holds is read with safetensors or torch.load(weights_only=True).

Each mode also knows its repro snippet (`repro`): the same save or load written as a user writes it, with
torch / transformers / peft only, which --keep-failed puts into a standalone repro.py
(harness/running/repro.py). A snippet is the body of a function of the script, indented as you like:

  save mode: ``def save(model, path, options)`` -- like the mode's own save function.
  load mode: ``def load(base_dir, path, options)``, returning ``(loaded model, what the load API returned)``.
    The script provides ``fresh_base(base_dir)`` (the base as the user loads it, with the case's
    before_adapt steps, on the loading device), ``fresh_config()`` (a new config of the case's adapter),
    ``MODEL_CLASS``, ``DTYPE_KWARGS``, ``LOAD_DEVICE`` and ``os``, ``torch``, ``peft``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


STATE_DICT_FILE = "state_dict.pt"


@dataclass(frozen=True)
class SaveMode:
    name: str
    produces: str
    applies: tuple  # adapter apply methods this mode works with
    save: Callable  # (model, path, options) -> None
    description: str
    repro: str  # the body of `def save(model, path, options)` in a standalone repro.py (see above)


@dataclass(frozen=True)
class LoadMode:
    name: str
    consumes: str
    load: Callable  # (ctx, path, options) -> LoadOutcome
    description: str
    repro: str  # the body of `def load(base_dir, path, options)` in a standalone repro.py (see above)


@dataclass
class LoadOutcome:
    model: object
    api_result: object = None  # what the load API returned, for missing/unexpected keys


# --- save ----------------------------------------------------------------------------------------------

def _peft_save(safe: bool):
    def save(model, path, options):
        model.save_pretrained(path, safe_serialization=safe, **options)
    return save


def _transformers_save(model, path, options):
    model.save_pretrained(path, **options)


def _merged_save(model, path, options):
    merged = model.merge_and_unload()
    merged.save_pretrained(path, **options)


def _state_dict_save(model, path, options):
    import torch

    os.makedirs(path, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(path, STATE_DICT_FILE))


def _peft_multi_save(model, path, options):
    """All adapters (or `selected_adapters`): PEFT writes "default" at the top and the others in sub-folders."""
    model.save_pretrained(path, **options)


SAVE_MODES: dict[str, SaveMode] = {m.name: m for m in [
    SaveMode("peft_safetensors", "adapter_dir", ("get_peft_model",), _peft_save(True),
             "PeftModel.save_pretrained(dir) with safetensors (the default)",
             repro="model.save_pretrained(path, safe_serialization=True, **options)"),
    SaveMode("peft_pickle", "adapter_dir", ("get_peft_model",), _peft_save(False),
             "PeftModel.save_pretrained(dir, safe_serialization=False)",
             repro="model.save_pretrained(path, safe_serialization=False, **options)"),
    SaveMode("transformers_save_pretrained", "adapter_dir", ("add_adapter",), _transformers_save,
             "transformers PreTrainedModel.save_pretrained(dir) after add_adapter",
             repro="model.save_pretrained(path, **options)"),
    SaveMode("merged_full", "full_model_dir", ("get_peft_model",), _merged_save,
             "merge_and_unload(), then save_pretrained of the full merged model",
             repro="""
                 merged = model.merge_and_unload()
                 merged.save_pretrained(path, **options)
             """),
    SaveMode("torch_state_dict", "state_dict_file", ("get_peft_model", "add_adapter"), _state_dict_save,
             "torch.save(model.state_dict()) of the whole adapted model",
             repro=f"""
                 os.makedirs(path, exist_ok=True)
                 torch.save(model.state_dict(), os.path.join(path, {STATE_DICT_FILE!r}))
             """),
    SaveMode("peft_multi_adapter", "adapter_tree", ("get_peft_model",), _peft_multi_save,
             "PeftModel.save_pretrained(dir) of a model with several adapters (options: selected_adapters)",
             repro="model.save_pretrained(path, **options)  # default at the top, the others in sub-folders"),
]}


# --- load ----------------------------------------------------------------------------------------------

def _peft_from_pretrained(ctx, path, options):
    from peft import PeftModel

    model = PeftModel.from_pretrained(ctx.fresh_base(), path, **options)
    return LoadOutcome(model)


def _peft_load_adapter(ctx, path, options):
    """A PEFT model with a different, random adapter loads the saved one under a second name."""
    import peft

    model = peft.get_peft_model(ctx.fresh_base(), ctx.fresh_config())
    name = options.get("adapter_name", "other")
    extra = {k: v for k, v in options.items() if k != "adapter_name"}
    result = model.load_adapter(path, adapter_name=name, **extra)
    model.set_adapter(name)
    return LoadOutcome(model, result)


def _transformers_load_adapter(ctx, path, options):
    model = ctx.fresh_base()
    result = model.load_adapter(path, **options)
    return LoadOutcome(model, result)


def _transformers_full(ctx, path, options):
    model, info = ctx.model_class().from_pretrained(path, output_loading_info=True, **ctx.dtype_kwargs(),
                                                    **options)
    return LoadOutcome(model.to(ctx.device), info)


def _read_state_dict(path):
    import torch

    return torch.load(os.path.join(path, STATE_DICT_FILE), map_location="cpu", weights_only=True)


def _state_dict_into_peft(ctx, path, options):
    import peft

    model = peft.get_peft_model(ctx.fresh_base(), ctx.fresh_config())
    result = model.load_state_dict(_read_state_dict(path), strict=options.get("strict", False))
    return LoadOutcome(model, result)


def _state_dict_into_base(ctx, path, options):
    model = ctx.fresh_base()
    result = model.load_state_dict(_read_state_dict(path), strict=options.get("strict", False))
    return LoadOutcome(model, result)


def adapter_dirs(path: str) -> dict[str, str]:
    """Adapter name -> folder, for a folder written by save_pretrained of several adapters."""
    found = {}
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        found["default"] = path
    for name in sorted(os.listdir(path)):
        sub = os.path.join(path, name)
        if os.path.isdir(sub) and os.path.isfile(os.path.join(sub, "adapter_config.json")):
            found[name] = sub
    return found


def _peft_multi_adapter(ctx, path, options):
    """Load every saved adapter (the first with from_pretrained, the rest with load_adapter), then activate one."""
    from peft import PeftModel

    dirs = adapter_dirs(path)
    first, *rest = dirs.items()
    model = PeftModel.from_pretrained(ctx.fresh_base(), first[1], adapter_name=first[0])
    for name, sub in rest:
        model.load_adapter(sub, adapter_name=name)
    model.set_adapter(options.get("active", "default"))
    return LoadOutcome(model)


_READ_STATE_DICT = f"torch.load(os.path.join(path, {STATE_DICT_FILE!r}), map_location='cpu', weights_only=True)"

LOAD_MODES: dict[str, LoadMode] = {m.name: m for m in [
    LoadMode("peft_from_pretrained", "adapter_dir", _peft_from_pretrained,
             "PeftModel.from_pretrained(fresh base, dir)",
             repro="""
                 model = peft.PeftModel.from_pretrained(fresh_base(base_dir), path, **options)
                 return model, None
             """),
    LoadMode("peft_load_adapter", "adapter_dir", _peft_load_adapter,
             "get_peft_model(fresh base) with a random adapter, then load_adapter(dir, adapter_name='other')",
             repro="""
                 model = peft.get_peft_model(fresh_base(base_dir), fresh_config())
                 name = options.get("adapter_name", "other")
                 extra = {k: v for k, v in options.items() if k != "adapter_name"}
                 result = model.load_adapter(path, adapter_name=name, **extra)
                 model.set_adapter(name)
                 return model, result
             """),
    LoadMode("transformers_load_adapter", "adapter_dir", _transformers_load_adapter,
             "transformers from_pretrained(base) + model.load_adapter(dir)",
             repro="""
                 model = fresh_base(base_dir)
                 result = model.load_adapter(path, **options)
                 return model, result
             """),
    LoadMode("transformers_full", "full_model_dir", _transformers_full,
             "transformers from_pretrained(dir) of a full (merged) model",
             repro="""
                 model, info = MODEL_CLASS.from_pretrained(path, output_loading_info=True, **DTYPE_KWARGS, **options)
                 return model.to(LOAD_DEVICE), info
             """),
    LoadMode("state_dict_into_peft", "state_dict_file", _state_dict_into_peft,
             "get_peft_model(fresh base).load_state_dict(saved state dict)",
             repro=f"""
                 model = peft.get_peft_model(fresh_base(base_dir), fresh_config())
                 state = {_READ_STATE_DICT}
                 result = model.load_state_dict(state, strict=options.get("strict", False))
                 return model, result
             """),
    LoadMode("state_dict_into_base", "state_dict_file", _state_dict_into_base,
             "plain fresh base .load_state_dict(saved PeftModel state dict)",
             repro=f"""
                 model = fresh_base(base_dir)
                 state = {_READ_STATE_DICT}
                 result = model.load_state_dict(state, strict=options.get("strict", False))
                 return model, result
             """),
    LoadMode("peft_multi_adapter", "adapter_tree", _peft_multi_adapter,
             "from_pretrained + load_adapter of every saved adapter, then set_adapter(options.active)",
             repro="""
                 dirs = {}  # adapter name -> folder: "default" at the top, the others in sub-folders
                 if os.path.isfile(os.path.join(path, "adapter_config.json")):
                     dirs["default"] = path
                 for sub in sorted(os.listdir(path)):
                     if os.path.isfile(os.path.join(path, sub, "adapter_config.json")):
                         dirs[sub] = os.path.join(path, sub)
                 (first, first_dir), *rest = dirs.items()
                 model = peft.PeftModel.from_pretrained(fresh_base(base_dir), first_dir, adapter_name=first)
                 for name, sub_dir in rest:
                     model.load_adapter(sub_dir, adapter_name=name)
                 model.set_adapter(options.get("active", "default"))
                 return model, None
             """),
]}

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class CheckpointError(ValueError):
    """An artifact that cannot be loaded: missing files, a truncated or corrupted tensor file."""


def check_safetensors(path: str) -> None:
    """Read the header and every tensor of a safetensors file; raise CheckpointError naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            for key in fh.keys():
                fh.get_tensor(key)
    except Exception as exc:
        raise CheckpointError(f"{path} is truncated or corrupted: safetensors cannot read it "
                              f"({type(exc).__name__}: {exc})") from None


def check_artifact(kind: str, path: str) -> None:
    """Clear errors for an artifact that cannot be loaded, before the load API gives an obscure one."""
    if not os.path.isdir(path):
        raise CheckpointError(f"the save stage left no {kind} at {path}")
    if kind == "adapter_dir":
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise CheckpointError(f"adapter directory {path} has no adapter_config.json "
                                  f"(it holds: {sorted(os.listdir(path))})")
        if not any(os.path.isfile(os.path.join(path, f)) for f in ADAPTER_FILES):
            raise CheckpointError(f"adapter directory {path} has no adapter weights ({' or '.join(ADAPTER_FILES)}); "
                                  f"it holds: {sorted(os.listdir(path))}")
    if kind == "adapter_tree":
        dirs = adapter_dirs(path)
        if not dirs:
            raise CheckpointError(f"{path} holds no adapter folder with an adapter_config.json "
                                  f"(it holds: {sorted(os.listdir(path))})")
        for sub in dirs.values():
            if sub != path:
                check_artifact("adapter_dir", sub)
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            check_safetensors(os.path.join(path, name))
