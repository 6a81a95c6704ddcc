"""Apply a case's adapter to a model and make it non-identity.

A freshly made adapter is usually a no-op (LoRA's B is zero), so a round trip through it proves nothing.
After applying, every trainable tensor gets a deterministic perturbation seeded from a hash of its name,
independent of the global RNG, as training would change it.
"""
from __future__ import annotations

import zlib

from harness.roundtrip import compat

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


def build_config(case):
    """The PEFT config object for `case` on the installed peft, module names translated for the installed
    transformers. Raises LookupError when the installed peft has no such config class."""
    import peft

    config_cls = getattr(peft, case.adapter_type, None)
    if config_cls is None:
        raise LookupError(f"peft {compat.installed_version('peft')} has no {case.adapter_type}")
    return config_cls(**adapter_kwargs(case))


def apply_adapter(model, case):
    """Returns the model to train: a PeftModel (get_peft_model) or the transformers model itself (add_adapter)."""
    config = build_config(case)
    if case.adapter_apply == "add_adapter":
        model.add_adapter(config)
        return model
    import peft

    return peft.get_peft_model(model, config)


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
