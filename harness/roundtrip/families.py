"""Tiny random-init model families: a registry of configs, inputs and how to make a local base checkpoint.

Nothing is downloaded: every base is built from a config with a fixed seed, saved with save_pretrained into
a directory and loaded back with from_pretrained(dir) on both sides of the round trip, as users do.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

BASE_SEED = 1234  # seeds the base model build and every from_pretrained of the base (new heads, resizes)


@dataclass(frozen=True)
class Inputs:
    """How a family's inputs are made: the function the harness calls, and its repro snippet -- the same code
    with torch only, the body of ``def family_inputs(config, gen)`` in the standalone repro.py of --keep-failed
    (harness/running/repro.py), indented as you like."""
    make: Callable  # (config, torch.Generator) -> dict of CPU tensors
    repro: str

    def __call__(self, config, gen) -> dict:
        return self.make(config, gen)


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str
    model_class: str
    tiny_config: dict
    make_inputs: Inputs  # (config, torch.Generator) -> dict of CPU tensors, with its repro snippet
    description: str = ""
    groups: dict = field(default_factory=dict)  # symbolic module groups for cases: "@attention" -> names
    layers_pattern: str | None = None  # the ModuleList name that layers_to_transform counts in
    task_type: str | None = None  # the PEFT task type of the model class (task_type = "@task_type" in a case)
    auto_class: str | None = None  # the transformers AutoModelFor* class that maps the config to model_class

    def classes(self):
        import transformers

        return getattr(transformers, self.config_class), getattr(transformers, self.model_class)


def _token_inputs(config, gen):
    import torch

    ids = torch.randint(0, config.vocab_size, (2, 12), generator=gen)
    ids[:, -1] = config.vocab_size - 1  # always touch the last row (a resized vocabulary's new tokens)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


TOKEN_INPUTS = Inputs(_token_inputs, """
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=gen)
    ids[:, -1] = config.vocab_size - 1  # always touch the last row (a resized vocabulary's new tokens)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
""")


def _pixel_inputs(config, gen):
    import torch

    return {"pixel_values": torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=gen)}


PIXEL_INPUTS = Inputs(_pixel_inputs, """
    return {"pixel_values": torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=gen)}
""")


def _small_image_inputs(config, gen):
    import torch

    return {"pixel_values": torch.randn(2, config.num_channels, 32, 32, generator=gen)}


SMALL_IMAGE_INPUTS = Inputs(_small_image_inputs, """
    return {"pixel_values": torch.randn(2, config.num_channels, 32, 32, generator=gen)}
""")


def _audio_inputs(config, gen):
    import torch

    return {"input_values": torch.randn(2, 1600, generator=gen)}


AUDIO_INPUTS = Inputs(_audio_inputs, """
    return {"input_values": torch.randn(2, 1600, generator=gen)}
""")


# initializer_range: the transformers default (0.02) leaves tiny models with logits near 1e-2, where LoRA on the
# attention moves a BERT classifier's logits by only ~6e-4 -- below what bf16 can resolve and barely above the
# fp32 tolerance, so a lost tensor could hide. At 0.2 (0.1 for Llama) logits are O(1) and the adapter's effect
# is 0.4 to 4, far above every tolerance (measured: bert 0.38, vit 1.4, wav2vec2 2.6, llama 2.7).
INIT = dict(initializer_range=0.2)

_VIT_GROUPS = {"targets": ["q_proj", "v_proj"], "mlp": ["fc1"], "head": ["classifier"], "norm": ["layernorm"]}
_VIT = dict(patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            num_labels=3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **INIT)

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("wav2vec2_ctc", "Wav2Vec2Config", "Wav2Vec2ForCTC",
           dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2, hidden_dropout=0.1, attention_dropout=0.1, **INIT),
           AUDIO_INPUTS, "speech encoder with a CTC head (no input embeddings: get_input_embeddings raises)",
           groups={"targets": ["q_proj", "v_proj"], "mlp": ["intermediate_dense"], "head": ["lm_head"],
                   "norm": ["final_layer_norm"]}, layers_pattern="layers", auto_class="AutoModelForCTC"),
    Family("vit_224", "ViTConfig", "ViTForImageClassification", dict(image_size=224, **_VIT), PIXEL_INPUTS,
           "ViT image classifier at 224 px (197 position embeddings)", groups=_VIT_GROUPS,
           auto_class="AutoModelForImageClassification"),
    Family("vit_512", "ViTConfig", "ViTForImageClassification", dict(image_size=512, **_VIT), PIXEL_INPUTS,
           "ViT image classifier at 512 px (1025 position embeddings)", groups=_VIT_GROUPS,
           auto_class="AutoModelForImageClassification"),
    Family("bert_classifier", "BertConfig", "BertForSequenceClassification",
           dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, num_labels=3, **INIT), TOKEN_INPUTS, "BERT sequence classifier",
           groups={"targets": ["query", "value"], "mlp": ["intermediate.dense"], "head": ["classifier"],
                   "norm": ["LayerNorm"], "embedding": ["word_embeddings"]}, layers_pattern="layer",
           task_type="SEQ_CLS", auto_class="AutoModelForSequenceClassification"),
    Family("llama_causal", "LlamaConfig", "LlamaForCausalLM",
           dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=37, max_position_embeddings=64, tie_word_embeddings=False,
                initializer_range=0.1), TOKEN_INPUTS,
           "Llama-style causal LM",
           groups={"targets": ["q_proj", "v_proj"], "mlp": ["gate_proj", "up_proj"], "head": ["lm_head"],
                   "norm": ["norm"], "embedding": ["embed_tokens"]}, layers_pattern="layers",
           task_type="CAUSAL_LM", auto_class="AutoModelForCausalLM"),
    Family("resnet_classifier", "ResNetConfig", "ResNetForImageClassification",
           dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                num_labels=3), SMALL_IMAGE_INPUTS,
           "ResNet image classifier at 32 px: convolutions and BatchNorm with running statistics (buffers)",
           groups={"targets": ["convolution"], "head": ["classifier.1"], "norm": ["normalization"]},
           auto_class="AutoModelForImageClassification"),
]}


def family_for_config(config) -> Family:
    """The first family built from this config class (inputs depend only on the config)."""
    for family in FAMILIES.values():
        if family.config_class == type(config).__name__:
            return family
    raise LookupError(f"no family uses {type(config).__name__}")


def make_inputs(family: Family, config, seed: int = 4321) -> dict:
    import torch

    return family.make_inputs(config, torch.Generator().manual_seed(seed))


def inputs_on(inputs: dict, device, dtype) -> dict:
    """The inputs on `device`, floating-point ones in `dtype` (token ids and masks keep theirs)."""
    return {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}


def model_inputs(model, seed: int) -> dict:
    """Inputs of the model's family (seed `seed`) as `model` takes them: on its device, in its dtype. `model` is a
    transformers model or a PeftModel around one (a compile's sample forward, a calibration's batches)."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    param = next(model.parameters())
    return inputs_on(make_inputs(family_for_config(config), config, seed), param.device, param.dtype)


class BaseCheckpoints:
    """Per-process cache of saved random-init base checkpoints, keyed by family and config overrides."""

    def __init__(self, root: str | None = None):
        self._root = root
        self._dirs: dict[str, str] = {}

    @property
    def root(self) -> str:
        if self._root is None:
            self._root = tempfile.mkdtemp(prefix="peft-compat-bases-")
        return self._root

    def known(self) -> dict[str, str]:
        """A snapshot of the checkpoints built so far: key -> folder (see adopt)."""
        return dict(self._dirs)

    def adopt(self, built: dict[str, str]) -> None:
        """Take over checkpoints that another process built into this cache's folder (a forked worker)."""
        self._dirs.update(built)

    def built_since(self, snapshot: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in self._dirs.items() if snapshot.get(k) != v}

    def remove(self) -> None:
        """Delete every checkpoint and the cache's folder (if this cache made it or was given it)."""
        import shutil

        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._root = None
        self._dirs.clear()

    def get(self, family: Family, overrides: dict | None = None) -> str:
        overrides = overrides or {}
        key = family.name + "-" + hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:10]
        path = self._dirs.get(key)
        if path is None or not os.path.exists(os.path.join(path, "config.json")):
            path = os.path.join(self.root, key)
            if not os.path.exists(os.path.join(path, "config.json")):  # else another worker of the run built it
                self._build(family, overrides, path)
            self._dirs[key] = path
        return path

    @staticmethod
    def _build(family: Family, overrides: dict, path: str) -> None:
        import torch

        config_cls, model_cls = family.classes()
        config = config_cls(**{**family.tiny_config, **overrides})
        torch.manual_seed(BASE_SEED)
        model = model_cls(config)
        # built beside its place and renamed into it: a folder at `path` is always complete; two workers that
        # build the same base at once each write their own folder, and the second rename finds the first's
        tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".partial-", dir=os.path.dirname(path))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # as os.makedirs would make it (mkdtemp: 0700), also where it is exported
        model.save_pretrained(tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.exists(os.path.join(path, "config.json")):
                raise


# --- loaded bases, reused ------------------------------------------------------------------------------------
#
# A cell loads its base twice (the saving side and the loading side), each time with from_pretrained, and a
# tiny base costs ~50 ms to load against a fifth of that to deep-copy. So each process keeps every base it loaded once,
# pristine (never handed out), and gives each caller a deep copy -- but only after proving, on the first load,
# that a copy is what a fresh from_pretrained would give: the base is loaded twice and the two must agree in
# every parameter and buffer (names, dtypes, shapes, devices, values, which ones share storage), the config,
# the train/eval flags, the warnings the load raised and the random-number state it left behind; and a deep
# copy of the first must agree with the second in the same way. If anything differs -- a weight the
# checkpoint lacks gets a fresh random init, say -- the base is never reused: every caller gets its own fresh
# load, as without the cache, so the cell sees what the user's own two from_pretrained calls would give.

LIBRARY_LOGGERS = ("transformers", "peft", "accelerate", "huggingface_hub")
NO_REUSE_ENV = "PEFT_COMPAT_NO_BASE_REUSE"  # "1": every base is loaded afresh (the behaviour without the cache)


def checkpoint_fingerprint(folder: str) -> tuple:
    """What identifies a checkpoint folder's content: its real path and every file's name and sha256 (tiny
    checkpoints: well under a millisecond; a timestamp could miss a rewrite of the same size)."""
    folder = os.path.realpath(folder)
    files = []
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                files.append((os.path.relpath(path, folder), hashlib.sha256(fh.read()).hexdigest()))
    return folder, tuple(sorted(files))


class _Captured:
    """Warnings and library log records raised while a base loads, to be raised again for each copy."""

    def __init__(self):
        self.records: list = []
        self.warnings: list = []

    def signature(self) -> list:
        return ([(r.name, r.levelno, r.getMessage()) for r in self.records]
                + [(w.category.__name__, str(w.message)) for w in self.warnings])

    def replay(self) -> None:
        import logging
        import warnings

        for record in self.records:
            logging.getLogger(record.name).handle(record)
        for w in self.warnings:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def capture_call(fn):
    """fn() with the warnings and library log records it raises captured, not shown: (result, exception or
    None, _Captured). `_Captured.replay()` raises them again."""
    import logging
    import warnings

    captured = _Captured()

    class Sink(logging.Handler):
        def emit(self, record):
            captured.records.append(record)

    sink = Sink(logging.NOTSET)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [sink], False
    result, error = None, None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = fn()
            except Exception as exc:
                error = exc
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate
    captured.warnings = list(caught)
    return result, error, captured


def _rng_state():
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state) -> None:
    import torch

    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _same_rng(a, b) -> bool:
    import torch

    if not torch.equal(a[0], b[0]) or (a[1] is None) != (b[1] is None):
        return False
    return a[1] is None or all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def model_difference(a, b) -> str | None:
    """None when models `a` and `b` are the same as far as a round trip can tell, else the first difference:
    class, every parameter and buffer (names, dtype, shape, device, requires_grad, exact values), which tensors
    share storage (tied weights), the config, and every module's train/eval flag."""
    import torch

    if type(a) is not type(b):
        return f"class {type(a).__name__} != {type(b).__name__}"
    for kind in ("parameters", "buffers"):
        ta = list(getattr(a, "named_" + kind)(remove_duplicate=False))
        tb = list(getattr(b, "named_" + kind)(remove_duplicate=False))
        if [n for n, _ in ta] != [n for n, _ in tb]:
            return f"{kind}: names differ"
        for (name, x), (_, y) in zip(ta, tb):
            if (x.dtype, tuple(x.shape), x.device, x.requires_grad) != (y.dtype, tuple(y.shape), y.device,
                                                                      y.requires_grad):
                return f"{name}: dtype, shape, device or requires_grad differ"
            if not torch.equal(x, y):
                return f"{name}: values differ"
        if _sharing(ta) != _sharing(tb):
            return f"{kind}: tensors that share storage differ"
    if a.config.to_dict() != b.config.to_dict():
        return "config differs"
    if [m.training for m in a.modules()] != [m.training for m in b.modules()]:
        return "train/eval flags differ"
    return None


def _sharing(named) -> list:
    groups: dict = {}
    for name, tensor in named:
        groups.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset()), []).append(name)
    return sorted(tuple(names) for names in groups.values() if len(names) > 1)


def copy_model(model):
    """copy.deepcopy(model), faster: the module tree is walked here, and a module's empty hook dicts and sets and
    its atoms (numbers, strings, dtypes, ...) are made or kept as deepcopy would, without deepcopy's generic
    reduce / reconstruct for each (deepcopy of a tiny model spends ~1.5 ms on that, cloning its tensors
    ~0.05 ms). Every other attribute, tensors and the config included, goes through copy.deepcopy with the
    shared memo, so shared objects stay shared within the copy and nothing is shared with `model`. A module
    class that customises copying or pickling (__deepcopy__, __reduce_ex__, __getstate__, __setstate__,
    __slots__) is deep-copied as a whole."""
    return _copy_module(model, {})


def _atoms() -> tuple:
    import torch

    return (type(None), bool, int, float, complex, str, bytes, type, torch.dtype, torch.device)


def _plain_module_class(cls) -> bool:
    import torch

    module = torch.nn.Module
    return (cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
            and cls.__getstate__ is module.__getstate__ and cls.__setstate__ is module.__setstate__
            and getattr(cls, "__deepcopy__", None) is None
            and not any("__slots__" in vars(base) for base in cls.__mro__ if base is not object))


def _copy_module(module, memo: dict):
    import copy
    from collections import OrderedDict

    done = memo.get(id(module))
    if done is not None:
        return done
    cls = type(module)
    if not _plain_module_class(cls):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    atoms, state = _atoms(), {}
    for key, value in module.__getstate__().items():  # what deepcopy copies: __dict__ less the compiled call
        kind = type(value)
        if kind in atoms:
            state[key] = value
        elif key == "_modules" and kind in (dict, OrderedDict):
            state[key] = kind((name, None if child is None else _copy_module(child, memo))
                              for name, child in value.items())
        elif kind in (dict, OrderedDict, set) and not value:
            state[key] = kind()
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__setstate__(state)
    return new


@dataclass
class _Pristine:
    model: object | None  # None: not reusable (why says why); every caller loads afresh
    captured: _Captured | None = None
    rng: tuple | None = None
    why: str | None = None


class LoadedBases:
    """Per-process cache of loaded bases (see the comment above): `load(key, loader)` returns a deep copy of a
    pristine base proven equal to a fresh `loader()`, or a fresh `loader()` where that proof failed. A loader
    that raises is not cached (every caller calls it, and sees it raise). `key` must name everything the
    loader's result depends on (checkpoint content, class, dtype, device, load kwargs, steps)."""

    def __init__(self):
        self._entries: dict = {}
        self.stats = {"admitted": 0, "refused": 0, "copies": 0, "fresh": 0}

    def clear(self) -> None:
        self._entries.clear()
        self.stats = dict.fromkeys(self.stats, 0)

    def refused(self) -> dict:
        """key -> why, for every base that was not reused."""
        return {k: e.why for k, e in self._entries.items() if e.model is None}

    def load(self, key, loader):
        if os.environ.get(NO_REUSE_ENV) == "1":
            self.stats["fresh"] += 1
            return loader()
        entry = self._entries.get(key)
        if entry is None:
            entry, first = self._admit(loader)
            self._entries[key] = entry
            if entry.model is None:  # refused: `first` is a fresh load, its warnings raised already
                self.stats["fresh"] += 1
                return first
            self.stats["copies"] += 1  # the proof's own copy: no second deep copy for the first caller
            entry.captured.replay()
            _set_rng_state(entry.rng)
            return first
        if entry.model is None:
            self.stats["fresh"] += 1
            return loader()
        model = copy_model(entry.model)
        self.stats["copies"] += 1
        entry.captured.replay()
        _set_rng_state(entry.rng)
        return model

    def replay(self, key) -> bool:
        """Raise again the warnings of loading `key` and leave the random state a load leaves, without a copy
        (for a caller that reuses what it computed from the same base). False when `key` is not reusable."""
        entry = self._entries.get(key)
        if entry is None or entry.model is None or os.environ.get(NO_REUSE_ENV) == "1":
            return False
        entry.captured.replay()
        _set_rng_state(entry.rng)
        return True

    @staticmethod
    def no_reuse() -> bool:
        return os.environ.get(NO_REUSE_ENV) == "1"

    def reusable(self, key) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.model is not None and os.environ.get(NO_REUSE_ENV) != "1"

    def _admit(self, loader):
        first, error, captured = capture_call(loader)
        if error is not None:  # not cached: every caller loads, and sees what it raises
            captured.replay()
            raise error
        rng = _rng_state()
        second, error, captured_again = capture_call(loader)
        if error is not None:  # the first load worked, the second did not: never reuse; the caller gets the first
            self.stats["refused"] += 1
            captured.replay()
            _set_rng_state(rng)
            return _Pristine(None, why=f"a second load raised {type(error).__name__}: {error}"), first
        why = model_difference(first, second)
        if why is None and captured.signature() != captured_again.signature():
            why = "the two loads raised different warnings"
        if why is None and not _same_rng(rng, _rng_state()):
            why = "the two loads left different random states"
        copied = None
        if why is None:
            try:
                copied = copy_model(first)
            except Exception as exc:  # a model that cannot be deep-copied is loaded afresh each time
                why = f"deepcopy failed: {type(exc).__name__}: {exc}"
            else:
                why = model_difference(copied, second)
                why = why and f"a deep copy differs from a fresh load: {why}"
        if why is not None:  # the caller gets the first load, its warnings and the random state it left
            self.stats["refused"] += 1
            captured.replay()
            _set_rng_state(rng)
            return _Pristine(None, why=f"two loads differ: {why}" if not why.startswith(("a deep", "deepcopy"))
                             else why), first
        self.stats["admitted"] += 1
        del second
        return _Pristine(first, captured, rng), copied


LOADED_BASES = LoadedBases()  # this process's; a forked worker inherits it and keeps its own


# --- compiled Jinja2 templates, reused ---------------------------------------------------------------------------
#
# Every save_pretrained of a PEFT model writes a model card (README.md): huggingface_hub renders its default
# template with jinja2.Template(text), which compiles the template's source again on every call (~5 ms, a fifth of
# a warm cell). Compiling is a pure function of the environment and the source, so a process keeps what it
# compiled, keyed by the environment object, the source text and the template class, and hands the same Template
# back; each call still renders it with its own data (the card says what that call's model is). A call with its own
# `globals`, or a source that is not a string, is compiled as before; so is every call under NO_REUSE_ENV=1.

_COMPILED: dict = {}


def reuse_compiled_templates() -> bool:
    """Make jinja2.Environment.from_string reuse what it compiled (once per process; idempotent). False when
    jinja2 is not installed."""
    try:
        import jinja2
    except ImportError:
        return False
    if getattr(jinja2.Environment.from_string, "_peft_compat_reuse", False):
        return True
    compile_source = jinja2.Environment.from_string

    def from_string(self, source, globals=None, template_class=None):
        if globals is not None or not isinstance(source, str) or os.environ.get(NO_REUSE_ENV) == "1":
            return compile_source(self, source, globals, template_class)
        key = (id(self), source, template_class)
        hit = _COMPILED.get(key)
        if hit is not None and hit[0] is self:  # the environment itself, not another one at a reused address
            return hit[1]
        template = compile_source(self, source, globals, template_class)
        _COMPILED[key] = (self, template)
        return template

    from_string._peft_compat_reuse = True
    from_string.__wrapped__ = compile_source
    jinja2.Environment.from_string = from_string
    return True
