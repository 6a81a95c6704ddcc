"""Whether a case names only what the round trip can do: its family, module groups, adapter type, save and
load modes and steps, checked against the registries of this layer. `harness.specs.case` checks the shape
of a case file (schema, numbers, cross-field rules); this module adds the names. Errors are CaseError, with
the file and the field.

`load_cases`, `read_case_file` and `load_case_file` here are what every front uses: shape and names.
"""
from __future__ import annotations

from functools import lru_cache

from harness.specs.case import DTYPES, Case, CaseError
from harness.specs.case import discover_cases as _discover_cases
from harness.specs.case import read_case_file as _read_shape


def _one_of(path, field_path, value, registry, what):
    if value not in registry:
        raise CaseError(path, field_path, f"unknown {what} {value!r} (known: {', '.join(sorted(registry))})")


def check_case(case: Case) -> Case:
    """Raise CaseError (file and field) when the case names something this layer does not have."""
    from harness.roundtrip.adapters import KNOWN_ADAPTER_TYPES
    from harness.roundtrip.calibration import CALIBRATIONS
    from harness.roundtrip.families import FAMILIES
    from harness.roundtrip.modes import BASE_DTYPE_OPTION, LOAD_MODES, SAVE_MODES
    from harness.roundtrip.steps import STEPS

    path = case.path or case.id
    _one_of(path, "family", case.family, FAMILIES, "model family")
    family = FAMILIES[case.family]
    for key, value in case.adapter_kwargs.items():
        for name in value if isinstance(value, list) else []:
            if isinstance(name, str) and name.startswith("@") and name[1:] not in family.groups:
                raise CaseError(path, f"adapter.kwargs.{key}", f"family {family.name!r} has no module group "
                                f"{name!r} (it has: {', '.join('@' + g for g in sorted(family.groups))})")
    if case.adapter_kwargs.get("task_type") == "@task_type" and family.task_type is None:
        raise CaseError(path, "adapter.kwargs.task_type", f"family {family.name!r} has no PEFT task type")
    _one_of(path, "adapter.type", case.adapter_type, KNOWN_ADAPTER_TYPES, "adapter type")
    if case.adapter_calibration is not None:
        _one_of(path, "adapter.calibration", case.adapter_calibration, CALIBRATIONS, "calibration")
        if case.adapter_apply != "get_peft_model":
            raise CaseError(path, "adapter.calibration", f"a calibration runs around get_peft_model, not "
                                                         f"adapter.apply={case.adapter_apply!r}")
    _one_of(path, "save.mode", case.save_mode, SAVE_MODES, "save mode")
    _one_of(path, "load.mode", case.load_mode, LOAD_MODES, "load mode")
    save, load = SAVE_MODES[case.save_mode], LOAD_MODES[case.load_mode]
    if case.adapter_apply not in save.applies:
        raise CaseError(path, "save.mode", f"save mode {save.name!r} does not work with "
                                           f"adapter.apply={case.adapter_apply!r} (it needs one of: "
                                           f"{', '.join(save.applies)})")
    base_dtype = case.load_options.get(BASE_DTYPE_OPTION)
    if base_dtype is not None and base_dtype not in DTYPES:
        raise CaseError(path, f"load.options.{BASE_DTYPE_OPTION}", f"{base_dtype!r} is not a dtype "
                                                                 f"(one of: {', '.join(DTYPES)})")
    if save.produces != load.consumes:
        raise CaseError(path, "load.mode", f"load mode {load.name!r} reads a {load.consumes} but save mode "
                                           f"{save.name!r} writes a {save.produces}")
    for i, spec in enumerate(case.steps):
        _one_of(path, f"steps.{i}.name", spec["name"], STEPS, "step")
        step = STEPS[spec["name"]]
        given = {k for k in spec if k != "name"}
        if given != set(step.params):
            raise CaseError(path, f"steps.{i}", f"step {step.name!r} takes exactly {sorted(step.params)}, "
                                                f"got {sorted(given)}")
        for key, typ in step.params.items():
            value = spec[key]
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise CaseError(path, f"steps.{i}.{key}", f"must be {typ.__name__}, got {value!r}")
    _check_adapter_kwargs(case, path)
    return case


def _fits(value, hint) -> bool:
    """Whether a TOML value can be meant for a config field annotated `hint`. Lenient where the annotation
    says little or changes between releases: numbers are numbers (int and float alike; a bool is not a number),
    a Literal checks the type of its options, not the option (releases add options), and classes other than the
    builtin ones (enums, config objects, callables) and unresolved names accept anything."""
    import types
    import typing

    if hint is typing.Any or hint is object or isinstance(hint, (str, typing.ForwardRef)):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(_fits(value, type(arg)) for arg in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        if not isinstance(value, (list, tuple)):
            return False
        item_hints = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(item_hints) == len(args) and args:  # tuple[int, int]: one hint per place
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return not item_hints or all(_fits(v, item_hints[0]) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        return len(args) != 2 or all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _hint_text(hint) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


@lru_cache(maxsize=None)
def _config_fields(config_cls) -> tuple[dict, dict]:
    """({name: field} of the config's init fields, {name: type hint})."""
    import dataclasses
    import typing

    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # an annotation this Python cannot resolve: check the types that are plain classes only
        hints = {name: f.type for name, f in fields.items() if isinstance(f.type, type)}
    return fields, hints


def _check_adapter_kwargs(case: Case, path) -> None:
    """adapter.kwargs against the config class of the installed peft: a value of the wrong type (`r = "four"`)
    or one that the config itself rejects (its __post_init__ raises TypeError / ValueError) is a CaseError on
    `adapter.kwargs`. Not checked here, and left to the run: a config class the installed peft lacks (the cell is
    not-applicable), and kwargs this release does not know (an older peft may lack a newer option; the config
    is then not built here at all)."""
    import dataclasses
    import warnings

    from harness.roundtrip import compat
    from harness.roundtrip.adapters import adapter_kwargs

    try:
        import peft
    except ImportError:  # no peft here: nothing to check against (every cell will say so)
        return
    config_cls = getattr(peft, case.adapter_type, None)
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        return
    kwargs = adapter_kwargs(case)
    fields, hints = _config_fields(config_cls)
    where = f"{case.adapter_type} of peft {compat.installed_version('peft')}"
    for key, value in kwargs.items():
        if key in fields and key in hints and not _fits(value, hints[key]):
            raise CaseError(path, f"adapter.kwargs.{key}", f"{where} takes {_hint_text(hints[key])} here, "
                                                           f"got {case.adapter_kwargs[key]!r}")
    if any(key not in fields for key in kwargs):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CaseError(path, "adapter.kwargs", f"{where} rejects them: {type(exc).__name__}: {exc}") from None
    except Exception:  # e.g. ImportError of an optional package: the run records what happens
        return


def case_from_dict(data: dict, path: str = "<dict>") -> Case:
    return check_case(Case.from_dict(data, path))


def read_case_file(path) -> list[Case]:
    """Every case a file declares (one, or one per family of its [matrix]), shape and names checked."""
    return [check_case(case) for case in _read_shape(path)]


def load_case_file(path) -> Case:
    """The one case of a file without a [matrix]."""
    cases = read_case_file(path)
    if len(cases) != 1:
        raise CaseError(path, "matrix", f"declares {len(cases)} cases; use read_case_file() or load_cases()")
    return cases[0]


def load_cases(*locations) -> list[Case]:
    """Every case under the folders (or case files) given, checked; duplicate ids name both files."""
    return [check_case(case) for case in _discover_cases(*locations)]
