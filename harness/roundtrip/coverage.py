"""Which PEFT methods (peft.PeftType members) the cases cover, per family, on the installed peft: a case covers
the PeftType whose config class it names (peft's own PEFT_TYPE_TO_CONFIG_MAPPING, not a hand-kept list), where
its `requires` hold here. tests/test_method_coverage.py holds this against every PeftType member and the
uncovered list (harness/specs/uncovered_methods.toml); the README's "Methods covered" section is rendered here."""
from __future__ import annotations

import textwrap

from harness.roundtrip import compat
from harness.specs.uncovered import NEEDS

README_BEGIN = "<!-- method coverage: rendered by harness.roundtrip.coverage.render_readme_section -->"
README_END = "<!-- end of method coverage -->"


def config_class_to_peft_type() -> dict[str, str]:
    """{config class name: PeftType value} of the installed peft."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {cls.__name__: str(getattr(peft_type, "value", peft_type))
            for peft_type, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def peft_types() -> list[str]:
    """Every member of the installed peft.PeftType, in peft's order."""
    import peft

    return [member.value for member in peft.PeftType]


def covered_methods(cases) -> dict[str, list[str]]:
    """{PeftType value: sorted families} of the cases that run here (their `requires` met; a config class that
    the installed peft does not map to a PeftType covers nothing)."""
    by_class = config_class_to_peft_type()
    covered: dict[str, set] = {}
    for case in cases:
        peft_type = by_class.get(case.adapter_type)
        if peft_type is None or compat.unmet_requirements(case.requires):
            continue
        covered.setdefault(peft_type, set()).add(case.family)
    return {method: sorted(families) for method, families in covered.items()}


def coverage_problems(cases, uncovered: dict) -> list[str]:
    """What is wrong between the PeftType members, the cases and the uncovered list; empty when nothing is."""
    members, covered = peft_types(), covered_methods(cases)
    problems = [f"{m}: no case covers it and harness/specs/uncovered_methods.toml does not say why"
                for m in members if m not in covered and m not in uncovered]
    problems += [f"{m}: listed as uncovered, but peft {compat.installed_version('peft')} has no such PeftType"
                 for m in uncovered if m not in members]
    problems += [f"{m}: listed as uncovered, but the cases cover it on {', '.join(covered[m])}"
                 for m in uncovered if m in covered]
    return problems


def render_readme_section(cases, uncovered: dict) -> str:
    """The README's table of covered methods (PeftType -> families, then the count per family) and the
    uncovered ones with their reasons, between README_BEGIN and README_END."""
    members, covered = peft_types(), covered_methods(cases)
    families = sorted({f for fams in covered.values() for f in fams})
    lines = [README_BEGIN, "",
             f"peft {compat.installed_version('peft')}: {len(covered)} of its {len(members)} PeftType members "
             f"are covered.", "", "| PeftType | families |", "| --- | --- |"]
    lines += [f"| `{m}` | {', '.join(covered[m])} |" for m in members if m in covered]
    lines += ["", "Methods per family: " + ", ".join(
        f"{f} {sum(f in fams for fams in covered.values())}" for f in families) + ".", "",
        "Not covered (`harness/specs/uncovered_methods.toml`):", ""]
    for method, entry in sorted(uncovered.items()):
        lines += textwrap.wrap(f"- `{method}` ({NEEDS[entry['needs']]}): {entry['reason']}", width=118,
                               subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(lines + ["", README_END])
