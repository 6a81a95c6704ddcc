"""The one place that knows how peft / transformers / torch differ across versions.

Cases and the round trip speak one vocabulary (the newest one); everything version-dependent is translated
here: keyword renames, module renames, where a feature first exists, and how to read versions.
"""
from __future__ import annotations

import importlib
import re
from functools import lru_cache

from packaging.specifiers import SpecifierSet
from packaging.version import Version

TRACKED_PACKAGES = ("peft", "transformers", "torch", "safetensors", "accelerate")


@lru_cache(maxsize=None)
def installed_version(package: str) -> str | None:
    """The version of `package` as the running process sees it (module.__version__), or None."""
    try:
        module = importlib.import_module(package)
    except Exception:  # an import that fails is "not installed" for the purpose of version checks
        return None
    return getattr(module, "__version__", None)


def release(package: str) -> Version | None:
    """Installed version without local/dev parts: torch '2.13.0+cpu' -> 2.13.0."""
    text = installed_version(package)
    if text is None:
        return None
    return Version(Version(text).base_version)


def satisfies(package: str, specifier: str) -> bool:
    version = release(package)
    if version is None:
        return False
    return SpecifierSet(specifier).contains(version, prereleases=True)


def unmet_requirements(requires: dict[str, str]) -> list[str]:
    """Human-readable list of the `requires` entries that the running process does not satisfy."""
    unmet = []
    for package, spec in sorted(requires.items()):
        if not satisfies(package, spec):
            unmet.append(f"{package}{spec} (installed: {installed_version(package)})")
    return unmet


# --- keyword renames ------------------------------------------------------------------------------------

def dtype_kwargs(dtype) -> dict:
    """from_pretrained takes `dtype` from transformers 4.56.0 on (checked in the wheels: 4.55.4 has only
    `torch_dtype`; 4.56.0 pops "dtype" and warns that `torch_dtype` is deprecated)."""
    if release("transformers") >= Version("4.56"):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}


# --- module renames -------------------------------------------------------------------------------------
# Cases name modules as the newest transformers does. Older releases used other names; each entry maps
# newest -> old name for a family under a transformers specifier. Names are matched as whole dotted
# components (and inside regex target_modules as words).
MODULE_RENAMES: list[tuple[str, str, dict[str, str]]] = [
    # transformers 5.9.0 rewrote ViT attention as q_proj/k_proj/v_proj (checked in the wheels: 5.8.1 and every
    # 4.x still have attention.attention.query/key/value; 5.0.0 .. 5.8.x too)
    ("vit_224", "<5.9", {"q_proj": "query", "k_proj": "key", "v_proj": "value"}),
    ("vit_512", "<5.9", {"q_proj": "query", "k_proj": "key", "v_proj": "value"}),
]


def module_renames(family: str) -> dict[str, str]:
    renames: dict[str, str] = {}
    for fam, spec, mapping in MODULE_RENAMES:
        if fam == family and satisfies("transformers", spec):
            renames.update(mapping)
    return renames


def translate_module_names(family: str, value):
    """Translate a target_modules / modules_to_save value (list of names, or a regex string)."""
    renames = module_renames(family)
    if not renames or value is None:
        return value
    if isinstance(value, str):  # a regex: replace whole words
        for new, old in renames.items():
            value = re.sub(rf"\b{re.escape(new)}\b", old, value)
        return value
    return [renames.get(name, name) for name in value]


MODULE_NAME_KWARGS = ("target_modules", "modules_to_save", "exclude_modules", "feedforward_modules")


def translate_adapter_kwargs(family: str, kwargs: dict) -> dict:
    out = dict(kwargs)
    for key in MODULE_NAME_KWARGS:
        if key in out:
            out[key] = translate_module_names(family, out[key])
    for key in ("rank_pattern", "alpha_pattern"):
        if key in out and isinstance(out[key], dict):
            out[key] = {translate_module_names(family, k): v for k, v in out[key].items()}
    return out


# --- what counts as an adapter key ----------------------------------------------------------------------
# Substrings that mark a state-dict key as belonging to an adapter (any PEFT method) rather than to the base.
ADAPTER_KEY_MARKERS = (
    "lora_", "modules_to_save", "hada_", "lokr_", "ia3_", "vera_", "boft_", "oft_", "hra_", "fourierft_",
    "ln_tuning_layers", "prompt_encoder", "prompt_embeddings", "trainable_tokens", "adaption_", "vblora_",
    "bone_", "miss_", "randlora_", "shira_", "c3a_", "poly_", "ranknum", "token_adapter",
    # peft 0.18 .. 0.21 methods: each tuner's `prefix`
    "adamss_", "beft_", "lily_", "frod_", "pvera_", "glora_", "unilora_", "road_", "hira_", "waveft_", "osf_",
    "delora_", "gralora_", "tinylora_", "psoft_", "peanut_", "shadow_", "supertuning_", "deft_", "xlora_", "cpt_",
    "cartridge_",
)


def is_adapter_key(key: str) -> bool:
    return any(marker in key for marker in ADAPTER_KEY_MARKERS)


def load_result_keys(result) -> tuple[list[str] | None, list[str] | None]:
    """missing/unexpected keys from whatever a load API returned (IncompatibleKeys, dict, dataclass, None)."""
    if result is None:
        return None, None
    if isinstance(result, dict):
        missing, unexpected = result.get("missing_keys"), result.get("unexpected_keys")
    else:
        missing = getattr(result, "missing_keys", None)
        unexpected = getattr(result, "unexpected_keys", None)
    as_list = lambda keys: None if keys is None else sorted(str(k) for k in keys)  # noqa: E731
    return as_list(missing), as_list(unexpected)
