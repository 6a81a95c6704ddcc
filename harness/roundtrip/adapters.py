"""Apply a case's adapter to a model and make it non-identity.

A freshly made adapter is usually a no-op (LoRA's B is zero), so a round trip through it proves nothing.
After applying, every trainable tensor gets a deterministic perturbation seeded from a hash of its name,
independent of the global RNG, as training would change it.
"""
from __future__ import annotations

import zlib

from harness.roundtrip import compat
from harness.roundtrip.calibration import calibrate

# Every PEFT config class name the harness knows about. A case naming another is a typo; a case naming one
# that the installed peft lacks is "not applicable" on that version (see roundtrip).
KNOWN_ADAPTER_TYPES = frozenset({
    "LoraConfig", "LoHaConfig", "LoKrConfig", "IA3Config", "AdaLoraConfig", "VeraConfig", "BOFTConfig",
    "OFTConfig", "HRAConfig", "FourierFTConfig", "LNTuningConfig", "PromptTuningConfig", "PrefixTuningConfig",
    "PromptEncoderConfig", "TrainableTokensConfig", "VBLoRAConfig", "BoneConfig", "MissConfig", "RandLoraConfig",
    "ShiraConfig", "C3AConfig", "PolyConfig", "XLoraConfig", "AdaptionPromptConfig",
    # the other config classes of peft 0.21.2's PEFT_TYPE_TO_CONFIG_MAPPING (tests/test_method_coverage.py fails
    # when the installed peft has one that is not listed here)
    "MultitaskPromptTuningConfig", "CPTConfig", "CartridgeConfig", "AdamssConfig", "BeftConfig", "LilyConfig",
    "FrodConfig", "PveraConfig", "GloraConfig", "UniLoraConfig", "RoadConfig", "HiraConfig", "WaveFTConfig",
    "OSFConfig", "DeloraConfig", "GraloraConfig", "TinyLoraConfig", "PsoftConfig", "PeanutConfig", "ShadowConfig",
    "SupertuningConfig", "DeftConfig",
})

FILL_STD = 0.2


GROUP_KWARGS = ("target_modules", "modules_to_save", "exclude_modules", "feedforward_modules")


def resolve_groups(family_name: str, kwargs: dict) -> dict:
    """Replace symbolic module groups ("@targets", "@mlp", "@head", "@norm", "@embedding") in module-name
    lists with the family's names, layers_pattern "@layers" with the family's layer list name and task_type
    "@task_type" with the family's PEFT task type."""
    from harness.roundtrip.families import FAMILIES

    family = FAMILIES[family_name]
    out = dict(kwargs)
    for key in GROUP_KWARGS:
        value = out.get(key)
        if isinstance(value, list):
            names: list = []
            for name in value:
                if isinstance(name, str) and name.startswith("@"):
                    if name[1:] not in family.groups:
                        raise KeyError(f"family {family_name!r} has no module group {name!r} "
                                       f"(it has: {', '.join('@' + g for g in sorted(family.groups))})")
                    names += [n for n in family.groups[name[1:]] if n not in names]
                elif name not in names:
                    names.append(name)
            out[key] = names
    if out.get("layers_pattern") == "@layers":
        out["layers_pattern"] = family.layers_pattern
    if out.get("task_type") == "@task_type":
        if family.task_type is None:
            raise KeyError(f"family {family_name!r} has no PEFT task type (task_type = \"@task_type\")")
        out["task_type"] = family.task_type
    return out


def adapter_kwargs(case) -> dict:
    """The config kwargs of `case` as the installed versions need them: groups resolved, names translated."""
    return compat.translate_adapter_kwargs(case.family, resolve_groups(case.family, case.adapter_kwargs))


# LoRA's sub-configurations: a case writes them as tables (eva_config = { rho = 2.0 }); the user passes the
# objects (EvaConfig(...)), and peft < 0.16 uses what it gets (a dict then breaks EVA: no attribute rho).
SUBCONFIG_MODULE = "peft.tuners.lora.config"
SUBCONFIG_CLASSES = {"eva_config": "EvaConfig", "corda_config": "CordaConfig", "loftq_config": "LoftQConfig"}


def with_subconfigs(kwargs: dict) -> dict:
    """`kwargs` with each sub-configuration table made into its peft class (where the installed peft has it)."""
    import importlib

    out = dict(kwargs)
    for key, class_name in SUBCONFIG_CLASSES.items():
        if isinstance(out.get(key), dict):
            cls = getattr(importlib.import_module(SUBCONFIG_MODULE), class_name, None)
            if cls is not None:
                out[key] = cls(**out[key])
    return out


def build_config(case, kwargs: dict | None = None):
    """The PEFT config object for `case` on the installed peft, module names translated for the installed
    transformers (or from `kwargs`, already resolved), sub-configuration tables made into their classes.
    Raises LookupError when the installed peft has no such config class."""
    import peft

    config_cls = getattr(peft, case.adapter_type, None)
    if config_cls is None:
        raise LookupError(f"peft {compat.installed_version('peft')} has no {case.adapter_type}")
    return config_cls(**with_subconfigs(adapter_kwargs(case) if kwargs is None else kwargs))


# X-LoRA mixes LoRA adapters that already exist on disk (XLoraConfig(adapters={name: folder})). In a case,
# adapters = { "0" = "@saved_lora", ... } asks the harness to make each one: a LoRA adapter (r = 4 on the family's
# @targets) on a copy of the base, filled with the adapter's name as salt, saved to a temporary folder that is
# deleted once get_peft_model has read it -- so the round trip's load can only use what the save wrote.
SAVED_LORA = "@saved_lora"


def uses_saved_lora(kwargs: dict) -> bool:
    adapters = kwargs.get("adapters")
    return isinstance(adapters, dict) and SAVED_LORA in adapters.values()


def save_lora_adapters(model, case, adapters: dict, root: str) -> dict:
    """`adapters` with each "@saved_lora" replaced by the folder of a LoRA adapter saved under `root`."""
    import copy
    import os

    import peft

    from harness.roundtrip.families import FAMILIES

    targets = FAMILIES[case.family].groups["targets"]
    out = {}
    for name, value in adapters.items():
        if value != SAVED_LORA:
            out[name] = value
            continue
        lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=compat.translate_module_names(case.family, targets)))
        fill_trainable(lora, salt=f"saved-lora-{name}")
        out[name] = os.path.join(root, f"lora-{name}")
        lora.save_pretrained(out[name])
    return out


def apply_adapter(model, case):
    """Returns the model to train: a PeftModel (get_peft_model), a PeftMixedModel (get_peft_model_mixed) or the
    transformers model itself (add_adapter). A case's calibration (harness.roundtrip.calibration) runs on the
    base before get_peft_model or on the PeftModel after it, as its method requires. "@saved_lora" adapters
    (X-LoRA's experts) are saved to a folder that is gone once the adapter is applied, as in repro.py."""
    import shutil
    import tempfile

    kwargs = adapter_kwargs(case)
    root = tempfile.mkdtemp(prefix="peft-compat-saved-lora-") if uses_saved_lora(kwargs) else None
    try:
        if root:
            kwargs["adapters"] = save_lora_adapters(model, case, kwargs["adapters"], root)
        return _apply(model, case, build_config(case, kwargs))
    finally:
        if root:
            shutil.rmtree(root, ignore_errors=True)


def _apply(model, case, config):
    if case.adapter_apply == "add_adapter":
        model.add_adapter(config)
        return model
    import peft

    if case.adapter_apply == "get_peft_model_mixed":  # a PeftMixedModel: adapters of several types
        return peft.get_peft_model(model, config, mixed=True)
    calibrate(model, case, config, "before_apply")
    model = peft.get_peft_model(model, config)
    calibrate(model, case, config, "after_apply")
    return model


def fill_trainable(model, salt: str = "train") -> list[str]:
    """Perturb every trainable tensor deterministically (seed = crc32 of salt + name). Returns their names."""
    import torch

    names = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            gen = torch.Generator().manual_seed(zlib.crc32(f"{salt}:{name}".encode()))
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * FILL_STD
            param.add_(noise.to(device=param.device, dtype=param.dtype))
            names.append(name)
    return names
