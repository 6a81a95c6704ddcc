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
    ``read_adapter_weights(path)`` (a saved adapter folder's tensors, safetensors else .bin), ``MODEL_CLASS``, ``DTYPE_KWARGS``, ``LOAD_DEVICE`` and ``os``, ``torch``, ``peft``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable


STATE_DICT_FILE = "state_dict.pt"
# A load option of every load mode, taken by the harness before the mode runs: the loading side's base is
# loaded in this dtype ("fp32", "bf16", "fp16") instead of the cell's (an adapter saved on a float32 base
# loaded into a bfloat16 one, or the reverse); the loaded model's inputs follow it.
BASE_DTYPE_OPTION = "base_dtype"


SAFETENSORS_FILE, PICKLE_FILE = "adapter_model.safetensors", "adapter_model.bin"
ADAPTER_FILES = (SAFETENSORS_FILE, PICKLE_FILE)  # what save_pretrained writes for an adapter, in peft's preference


@dataclass(frozen=True)
class SaveMode:
    name: str
    produces: str
    applies: tuple  # adapter apply methods this mode works with
    save: Callable  # (model, path, options) -> None
    description: str
    repro: str  # the body of `def save(model, path, options)` in a standalone repro.py (see above)
    # the adapter as initialised (before training) is saved first and its folder passed to the save as
    # options["path_initial_model_for_weight_conversion"] (PiSSA / OLoRA / CorDA: the trained adapter is converted
    # into a plain LoRA that works on the untouched base)
    needs_initial: bool = False
    # modules that fix folders from tempfile.gettempdir() once per process, when imported (torch's compile cache):
    # the cell's process imports them before the cell's own temporary folder takes over (harness.running.isolation)
    process_imports: tuple = ()


@dataclass(frozen=True)
class LoadMode:
    name: str
    consumes: str
    load: Callable  # (ctx, path, options) -> LoadOutcome
    description: str
    repro: str  # the body of `def load(base_dir, path, options)` in a standalone repro.py (see above)
    # the load reads the saved adapter_config.json (False: it builds the config from the case, as a user who passes
    # their own config does; then a saved field the reader's peft lacks is not dropped by the reader)
    reads_saved_config: bool = True


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


def _compiled_save(model, path, options):
    """torch.compile(model), one forward (compilation is lazy), then save_pretrained through the compiled
    module, as a user who trained the compiled model does (attribute access reaches the original module)."""
    import torch

    from harness.roundtrip.families import model_inputs

    compiled = torch.compile(model, backend=options.get("backend", "inductor"))
    compiled.eval()
    with torch.no_grad():
        compiled(**model_inputs(model, seed=7))
    compiled.save_pretrained(path)


def _mixed_save(model, path, options):
    """A PeftMixedModel cannot save itself (NotImplementedError): the user saves each adapter as a PeftModel
    would, its weights (get_peft_model_state_dict) and its config, in a folder per adapter name."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    for name, config in model.peft_config.items():
        sub = os.path.join(path, name)
        os.makedirs(sub, exist_ok=True)
        state = get_peft_model_state_dict(model, adapter_name=name)
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(sub, SAFETENSORS_FILE))
        config.save_pretrained(sub)


ADAPTER_SUBDIR, BASE_SUBDIR = "adapter", "base"  # the two folders of an "adapter_and_base" artifact


def _peft_and_unloaded_base_save(model, path, options):
    """An initialisation that rewrites the base (LoftQ: the quantized-dequantized weights) saved as PEFT documents
    it: the adapter with init_lora_weights=True in its config (loading it must not initialise it again), then
    unload() and save_pretrained of the rewritten base beside it."""
    save_initial_adapter(model, os.path.join(path, ADAPTER_SUBDIR), **options)
    model.unload().save_pretrained(os.path.join(path, BASE_SUBDIR))


SAVE_MODES: dict[str, SaveMode] = {m.name: m for m in [
    SaveMode("peft_safetensors", "adapter_dir", ("get_peft_model",), _peft_save(True),
             "PeftModel.save_pretrained(dir) with safetensors (the default)",
             repro="model.save_pretrained(path, safe_serialization=True, **options)"),
    SaveMode("peft_converted", "adapter_dir", ("get_peft_model",), _peft_save(True),
             "PeftModel.save_pretrained(dir, path_initial_model_for_weight_conversion=<the adapter saved before "
             "training>): PiSSA / OLoRA converted into a plain LoRA for the untouched base",
             repro="model.save_pretrained(path, safe_serialization=True, **options)", needs_initial=True),
    SaveMode("peft_and_unloaded_base", "adapter_and_base", ("get_peft_model",), _peft_and_unloaded_base_save,
             "PeftModel.save_pretrained(dir/adapter) with init_lora_weights=True in the saved config, then "
             "unload().save_pretrained(dir/base): the base an initialisation rewrote (LoftQ), saved beside its adapter",
             repro=f"""
                 save_with_plain_init(model, os.path.join(path, {ADAPTER_SUBDIR!r}), **options)
                 model.unload().save_pretrained(os.path.join(path, {BASE_SUBDIR!r}))  # the rewritten base
             """),
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
    SaveMode("peft_compiled", "adapter_dir", ("get_peft_model",), _compiled_save,
             "torch.compile(PeftModel), one forward, then save_pretrained through the compiled module "
             "(options: backend, default inductor)",
             repro="""
                 compiled = torch.compile(model, backend=options.get("backend", "inductor"))
                 compiled.eval()
                 with torch.no_grad():
                     compiled(**model_inputs(model, seed=7))
                 compiled.save_pretrained(path)
             """,
             process_imports=("torch._inductor.codecache",)),
    SaveMode("peft_mixed_each_adapter", "adapter_tree", ("get_peft_model_mixed",), _mixed_save,
             "each adapter of a PeftMixedModel saved as PeftModel would (weights + config, a folder per name)",
             repro="""
                 from safetensors.torch import save_file

                 for name, config in model.peft_config.items():
                     sub = os.path.join(path, name)
                     os.makedirs(sub, exist_ok=True)
                     state = peft.get_peft_model_state_dict(model, adapter_name=name)
                     save_file({k: v.contiguous() for k, v in state.items()},
                               os.path.join(sub, "adapter_model.safetensors"))
                     config.save_pretrained(sub)
             """),
]}


def save_initial_adapter(model, path, **options) -> str:
    """The adapter saved the way PEFT documents it for an initialisation that must not run again at load (the
    adapter before training, for a PiSSA / OLoRA / CorDA conversion; LoftQ's adapter beside its rewritten base):
    with init_lora_weights=True in its config."""
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True
    try:
        model.save_pretrained(path, **options)
    finally:
        config.init_lora_weights = init
    return path


# --- load ----------------------------------------------------------------------------------------------

def _peft_from_pretrained(ctx, path, options):
    from peft import PeftModel

    model = PeftModel.from_pretrained(ctx.fresh_base(), path, **options)
    return LoadOutcome(model)


def _peft_from_pretrained_saved_base(ctx, path, options):
    """The base saved beside the adapter (from_pretrained(dir/base), the case's load kwargs), then
    PeftModel.from_pretrained(that base, dir/adapter): how a LoftQ model is served."""
    from peft import PeftModel

    base = ctx.model_class().from_pretrained(os.path.join(path, BASE_SUBDIR), **ctx.dtype_kwargs(),
                                             **ctx.case.load_kwargs)
    model = PeftModel.from_pretrained(base.to(ctx.device), os.path.join(path, ADAPTER_SUBDIR), **options)
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


def _load_every_adapter(cls, ctx, path):
    """cls.from_pretrained(a fresh base, the first saved adapter) + load_adapter(each other one): the model and
    the adapter names (cls: PeftModel or PeftMixedModel)."""
    dirs = adapter_dirs(path)
    (first, first_dir), *rest = dirs.items()
    model = cls.from_pretrained(ctx.fresh_base(), first_dir, adapter_name=first)
    for name, sub in rest:
        model.load_adapter(sub, adapter_name=name)
    return model, list(dirs)


def _peft_multi_adapter(ctx, path, options):
    """Load every saved adapter (the first with from_pretrained, the rest with load_adapter), then activate one."""
    from peft import PeftModel

    model, _ = _load_every_adapter(PeftModel, ctx, path)
    model.set_adapter(options.get("active", "default"))
    return LoadOutcome(model)


def read_adapter_weights(path: str) -> dict:
    """The adapter tensors of a saved adapter folder: adapter_model.safetensors, else adapter_model.bin
    (weights only)."""
    import torch
    from safetensors.torch import load_file

    st = os.path.join(path, SAFETENSORS_FILE)
    if os.path.isfile(st):
        return load_file(st)
    return torch.load(os.path.join(path, PICKLE_FILE), map_location="cpu", weights_only=True)


@contextmanager
def adapter_dir_on_base(path: str, base_dir: str):
    """The adapter folder to give a load that finds its base through adapter_config.json
    (`base_model_name_or_path`): `path` itself when it already names `base_dir`; else a temporary copy whose
    config names `base_dir` (an artifact read on another machine or release: the writer's base folder is gone).
    The artifact itself is never rewritten."""
    import json
    import shutil
    import tempfile

    with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    named = config.get("base_model_name_or_path")
    if named and os.path.isdir(named) and os.path.samefile(named, base_dir):
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="peft-compat-adapter-")
    try:
        copy = os.path.join(tmp, "adapter")
        shutil.copytree(path, copy)
        config["base_model_name_or_path"] = os.path.abspath(base_dir)
        with open(os.path.join(copy, "adapter_config.json"), "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
        yield copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def decoy_adapter(ctx, apply: str = "get_peft_model"):
    """A folder holding another adapter of the case's config on the same base (its own values, salt "decoy"),
    saved as the user saves one: the adapter a hotswap replaces, or the one a delete_adapter removes."""
    import shutil
    import tempfile

    import peft

    from harness.roundtrip.adapters import fill_trainable

    tmp = tempfile.mkdtemp(prefix="peft-compat-decoy-")
    try:
        model = ctx.fresh_base()
        if apply == "add_adapter":
            model.add_adapter(ctx.fresh_config())
        else:
            model = peft.get_peft_model(model, ctx.fresh_config())
        fill_trainable(model, salt="decoy")
        model.save_pretrained(tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _peft_hotswap(ctx, path, options):
    """PeftModel.from_pretrained(base, another adapter), then hotswap_adapter(model, dir, "default")."""
    from peft import PeftModel
    from peft.utils.hotswap import hotswap_adapter

    with decoy_adapter(ctx) as decoy:
        model = PeftModel.from_pretrained(ctx.fresh_base(), decoy)
    hotswap_adapter(model, path, adapter_name="default", torch_device=ctx.device, **options)
    return LoadOutcome(model)


def _auto_from_adapter_dir(ctx, path, options, package: str, default_name: str):
    """<package>.<options' auto_class, else default_name>.from_pretrained(adapter dir): the base is the one
    adapter_config.json names."""
    import importlib

    opts = dict(options)
    auto_cls = getattr(importlib.import_module(package), opts.pop("auto_class", default_name))
    with adapter_dir_on_base(path, ctx.base_dir) as adapter_dir:
        model = auto_cls.from_pretrained(adapter_dir, **ctx.dtype_kwargs(), **opts)
    return LoadOutcome(model.to(ctx.device))


def _peft_auto(ctx, path, options):
    """AutoPeftModel*.from_pretrained(adapter dir): the base comes from adapter_config.json."""
    return _auto_from_adapter_dir(ctx, path, options, "peft", "AutoPeftModel")


def _peft_inject_set_state_dict(ctx, path, options):
    """inject_adapter_in_model(config, fresh base) + set_peft_model_state_dict(model, saved weights): the
    low-level API, with the keys of the saved file as they are (PeftModel's "base_model.model." prefix off)."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    model = inject_adapter_in_model(ctx.fresh_config(), ctx.fresh_base())
    prefix = "base_model.model."
    state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in read_adapter_weights(path).items()}
    result = set_peft_model_state_dict(model, state, **options)
    return LoadOutcome(model, adapter_keys_only(result))


def adapter_keys_only(result) -> dict:
    """The load result of a state dict that holds the adapter alone (set_peft_model_state_dict loads with
    strict=False): every base weight is "missing" by construction, so only the adapter keys it reports count."""
    from harness.roundtrip.compat import is_adapter_key, load_result_keys

    missing, unexpected = load_result_keys(result)
    return {"missing_keys": [k for k in missing or [] if is_adapter_key(k)], "unexpected_keys": unexpected}


def _peft_mixed(ctx, path, options):
    """PeftMixedModel.from_pretrained(first adapter) + load_adapter(the others), all of them active."""
    from peft import PeftMixedModel

    model, names = _load_every_adapter(PeftMixedModel, ctx, path)
    model.set_adapter(names)
    return LoadOutcome(model)


def _transformers_load_state_dict(ctx, path, options):
    """model.load_adapter(peft_config=..., adapter_state_dict=<the saved tensors>): no folder."""
    import peft

    model = ctx.fresh_base()
    config = peft.PeftConfig.from_pretrained(path)
    result = model.load_adapter(peft_config=config, adapter_state_dict=read_adapter_weights(path), **options)
    return LoadOutcome(model, result)


def _transformers_auto(ctx, path, options):
    """AutoModelFor*.from_pretrained(adapter dir): transformers finds adapter_config.json, loads its base and
    the adapter."""
    from harness.roundtrip.families import FAMILIES

    return _auto_from_adapter_dir(ctx, path, options, "transformers", FAMILIES[ctx.case.family].auto_class)


def _transformers_hotswap(ctx, path, options):
    """enable_peft_hotswap(), load_adapter(another adapter), then load_adapter(dir, hotswap=True) in its place."""
    model = ctx.fresh_base()
    model.enable_peft_hotswap(**options)
    with decoy_adapter(ctx, "add_adapter") as decoy:
        model.load_adapter(decoy, adapter_name="default")
    result = model.load_adapter(path, adapter_name="default", hotswap=True)
    return LoadOutcome(model, result)


def _transformers_delete_adapter(ctx, path, options):
    """load_adapter(another adapter, "decoy"), load_adapter(dir, "default"), set_adapter, delete_adapter("decoy")."""
    model = ctx.fresh_base()
    with decoy_adapter(ctx, "add_adapter") as decoy:
        model.load_adapter(decoy, adapter_name="decoy")
    result = model.load_adapter(path, adapter_name="default", **options)
    model.set_adapter("default")
    model.delete_adapter("decoy")
    return LoadOutcome(model, result)


_READ_STATE_DICT = f"torch.load(os.path.join(path, {STATE_DICT_FILE!r}), map_location='cpu', weights_only=True)"


LOAD_MODES: dict[str, LoadMode] = {m.name: m for m in [
    LoadMode("peft_from_pretrained", "adapter_dir", _peft_from_pretrained,
             "PeftModel.from_pretrained(fresh base, dir)",
             repro="""
                 model = peft.PeftModel.from_pretrained(fresh_base(base_dir), path, **options)
                 return model, None
             """),
    LoadMode("peft_from_pretrained_saved_base", "adapter_and_base", _peft_from_pretrained_saved_base,
             "from_pretrained(dir/base), the base saved beside the adapter, then PeftModel.from_pretrained(it, "
             "dir/adapter)",
             repro=f"""
                 base = MODEL_CLASS.from_pretrained(os.path.join(path, {BASE_SUBDIR!r}), **DTYPE_KWARGS, **LOAD_KWARGS)
                 model = peft.PeftModel.from_pretrained(base.to(LOAD_DEVICE), os.path.join(path, {ADAPTER_SUBDIR!r}),
                                                        **options)
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
                 model, _ = load_every_adapter(peft.PeftModel, base_dir, path)
                 model.set_adapter(options.get("active", "default"))
                 return model, None
             """),
    LoadMode("peft_hotswap", "adapter_dir", _peft_hotswap,
             "PeftModel.from_pretrained(fresh base, another adapter), then hotswap_adapter(model, dir, 'default')",
             repro="""
                 from peft.utils.hotswap import hotswap_adapter

                 model = peft.PeftModel.from_pretrained(fresh_base(base_dir), save_decoy(base_dir))
                 hotswap_adapter(model, path, adapter_name="default", torch_device=LOAD_DEVICE, **options)
                 return model, None
             """),
    LoadMode("peft_auto", "adapter_dir", _peft_auto,
             "AutoPeftModel*.from_pretrained(dir) (options: auto_class, default AutoPeftModel); the base is the "
             "one adapter_config.json names (a copy names the reader's base when the writer's is gone)",
             repro="""
                 return auto_from_adapter_dir(peft, peft.AutoPeftModel, path, options), None
             """),
    LoadMode("peft_inject_set_state_dict", "adapter_dir", _peft_inject_set_state_dict,
             "inject_adapter_in_model(config, fresh base) + set_peft_model_state_dict(model, saved weights)",
             repro="""
                 weights = read_adapter_weights(path)  # adapter_model.safetensors, else adapter_model.bin
                 model = peft.inject_adapter_in_model(fresh_config(), fresh_base(base_dir))
                 prefix = "base_model.model."
                 state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in weights.items()}
                 result = peft.set_peft_model_state_dict(model, state, **options)
                 # strict=False: every base weight is "missing" by construction; the adapter keys count
                 missing = [k for k in result.missing_keys if any(m in k for m in ADAPTER_KEY_MARKERS)]
                 return model, {"missing_keys": missing, "unexpected_keys": result.unexpected_keys}
             """, reads_saved_config=False),
    LoadMode("peft_mixed", "adapter_tree", _peft_mixed,
             "PeftMixedModel.from_pretrained(first adapter folder) + load_adapter(the others), all active",
             repro="""
                 model, names = load_every_adapter(peft.PeftMixedModel, base_dir, path)
                 model.set_adapter(names)
                 return model, None
             """),
    LoadMode("transformers_load_adapter_state_dict", "adapter_dir", _transformers_load_state_dict,
             "transformers from_pretrained(base) + load_adapter(peft_config=..., adapter_state_dict=saved tensors)",
             repro="""
                 weights = read_adapter_weights(path)  # adapter_model.safetensors, else adapter_model.bin
                 model = fresh_base(base_dir)
                 config = peft.PeftConfig.from_pretrained(path)
                 result = model.load_adapter(peft_config=config, adapter_state_dict=weights, **options)
                 return model, result
             """),
    LoadMode("transformers_auto", "adapter_dir", _transformers_auto,
             "transformers AutoModelFor*.from_pretrained(adapter dir) (options: auto_class); the base is the one "
             "adapter_config.json names (a copy names the reader's base when the writer's is gone)",
             repro="""
                 return auto_from_adapter_dir(transformers, AUTO_CLASS, path, options), None
             """),
    LoadMode("transformers_hotswap", "adapter_dir", _transformers_hotswap,
             "enable_peft_hotswap(**options), load_adapter(another adapter), load_adapter(dir, hotswap=True)",
             repro="""
                 model = fresh_base(base_dir)
                 model.enable_peft_hotswap(**options)
                 model.load_adapter(save_decoy(base_dir, "add_adapter"), adapter_name="default")
                 result = model.load_adapter(path, adapter_name="default", hotswap=True)
                 return model, result
             """),
    LoadMode("transformers_delete_adapter", "adapter_dir", _transformers_delete_adapter,
             "load_adapter(another adapter, 'decoy') + load_adapter(dir), set_adapter, delete_adapter('decoy')",
             repro="""
                 model = fresh_base(base_dir)
                 model.load_adapter(save_decoy(base_dir, "add_adapter"), adapter_name="decoy")
                 result = model.load_adapter(path, adapter_name="default", **options)
                 model.set_adapter("default")
                 model.delete_adapter("decoy")
                 return model, result
             """),
]}


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
    if kind == "adapter_and_base":
        check_artifact("adapter_dir", os.path.join(path, ADAPTER_SUBDIR))
        if not os.path.isfile(os.path.join(path, BASE_SUBDIR, "config.json")):
            raise CheckpointError(f"{path} has no saved base ({BASE_SUBDIR}/config.json); it holds: "
                                  f"{sorted(os.listdir(path))}")
        check_artifact("full_model_dir", os.path.join(path, BASE_SUBDIR))
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            check_safetensors(os.path.join(path, name))
