"""The PEFT methods no case covers, with the reason (uncovered_methods.toml): data, validated here for its shape.
Whether each entry is right (a PeftType member of the installed peft that no case covers) is checked by
tests/test_method_coverage.py against the cases and the installed peft."""
from __future__ import annotations

from harness.specs.tables import read_table

NEEDS = {
    "gpu": "needs a GPU",
    "quantization": "needs a quantization library",
    "library": "needs a package the project does not install",
    "files": "needs inputs on disk before the config is built",
    "hub": "needs a model or tokenizer from the hub",
}
SOURCE = "harness/specs/uncovered_methods.toml"


class UncoveredError(ValueError):
    """An entry of the uncovered-methods table that cannot be used; str() names the file and the entry."""


def parse_uncovered(data: dict, source: str = SOURCE) -> dict[str, dict]:
    """{PeftType value: {"needs": ..., "reason": ...}}; raises UncoveredError naming the entry."""
    out = {}
    for method, entry in data.items():
        where = f"{source}: [{method}]"
        if method != method.upper() or not method.replace("_", "").isalnum():
            raise UncoveredError(f"{where}: a PeftType member is written in capitals, e.g. [XLORA]")
        if not isinstance(entry, dict) or set(entry) != {"needs", "reason"}:
            raise UncoveredError(f"{where}: must have exactly `needs` and `reason`")
        if entry["needs"] not in NEEDS:
            raise UncoveredError(f"{where}: needs = {entry['needs']!r} is not one of {', '.join(sorted(NEEDS))}")
        if not isinstance(entry["reason"], str) or not entry["reason"].strip():
            raise UncoveredError(f"{where}: reason must say why no case can cover it")
        out[method] = {"needs": entry["needs"], "reason": " ".join(entry["reason"].split())}
    return out


def load_uncovered(path=None) -> dict[str, dict]:
    """The shipped table, or the one at `path`."""
    data, source = read_table("uncovered_methods.toml", path, UncoveredError, "uncovered-methods table")
    return parse_uncovered(data, source)
