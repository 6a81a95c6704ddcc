"""Whether a case names only what the round trip can do: its family, module groups, adapter type, save and
load modes and steps, checked against the registries of this layer. `harness.specs.case` checks the shape
of a case file (schema, numbers, cross-field rules); this module adds the names. Errors are CaseError, with
the file and the field.

`load_cases`, `read_case_file` and `load_case_file` here are what every front uses: shape and names.
"""
from __future__ import annotations

from harness.specs.case import Case, CaseError
from harness.specs.case import discover_cases as _discover_cases
from harness.specs.case import read_case_file as _read_shape


def _one_of(path, field_path, value, registry, what):
    if value not in registry:
        raise CaseError(path, field_path, f"unknown {what} {value!r} (known: {', '.join(sorted(registry))})")


def check_case(case: Case) -> Case:
    """Raise CaseError (file and field) when the case names something this layer does not have."""
    from harness.roundtrip.adapters import KNOWN_ADAPTER_TYPES
    from harness.roundtrip.families import FAMILIES
    from harness.roundtrip.modes import LOAD_MODES, SAVE_MODES
    from harness.roundtrip.steps import STEPS

    path = case.path or case.id
    _one_of(path, "family", case.family, FAMILIES, "model family")
    family = FAMILIES[case.family]
    for key, value in case.adapter_kwargs.items():
        for name in value if isinstance(value, list) else []:
            if isinstance(name, str) and name.startswith("@") and name[1:] not in family.groups:
                raise CaseError(path, f"adapter.kwargs.{key}", f"family {family.name!r} has no module group "
                                f"{name!r} (it has: {', '.join('@' + g for g in sorted(family.groups))})")
    _one_of(path, "adapter.type", case.adapter_type, KNOWN_ADAPTER_TYPES, "adapter type")
    _one_of(path, "save.mode", case.save_mode, SAVE_MODES, "save mode")
    _one_of(path, "load.mode", case.load_mode, LOAD_MODES, "load mode")
    save, load = SAVE_MODES[case.save_mode], LOAD_MODES[case.load_mode]
    if case.adapter_apply not in save.applies:
        raise CaseError(path, "save.mode", f"save mode {save.name!r} does not work with "
                                           f"adapter.apply={case.adapter_apply!r} (it needs one of: "
                                           f"{', '.join(save.applies)})")
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
    return case


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
