"""Case records: one TOML file per case under cases/, validated with file and field named in every error."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # python < 3.11
    import tomli as tomllib

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

DEVICES = ("cpu", "cuda", "cuda_to_cpu")
DTYPES = ("fp32", "bf16", "fp16")
# The longest time limit a cell may have (case timeout_s, CLI --timeout, pytest --cell-timeout): one day. A limit
# must be a finite number of seconds; inf, nan or 1e20 is a typo, and would break the wait on the cell's process.
MAX_TIMEOUT_S = 86400.0


def timeout_problem(value) -> str | None:
    """Why `value` cannot be a cell's time limit in seconds, or None when it can."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number of seconds"
    if not math.isfinite(value):
        return f"{value!r} is not a finite number of seconds"
    if not value > 0:
        return f"{value:g}: the time limit must be more than 0 seconds"
    if value > MAX_TIMEOUT_S:
        return f"{value:g} s is more than the longest time limit of {MAX_TIMEOUT_S:g} s (one day)"
    return None


class CaseError(ValueError):
    """A case file that cannot be used. str() names the file and the field."""

    def __init__(self, path, field_path: str, message: str):
        self.path, self.field, self.message = str(path), field_path, message
        super().__init__(f"{self.path}: field '{field_path}': {message}" if field_path else f"{self.path}: {message}")


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    adapter_type: str
    save_mode: str
    load_mode: str
    path: str = ""
    description: str = ""
    tags: tuple = ()
    references: tuple = ()
    dtypes: tuple = ("fp32",)
    full_dtypes: tuple = ()
    devices: tuple = DEVICES
    timeout_s: float | None = None
    model_config: dict = field(default_factory=dict)
    load_kwargs: dict = field(default_factory=dict)
    adapter_apply: str = "get_peft_model"
    adapter_kwargs: dict = field(default_factory=dict)
    adapter_init: str = "fill"
    adapter_calibration: str | None = None  # a data-driven initialisation (harness.roundtrip.calibration)
    forward_kwargs: dict = field(default_factory=dict)  # extra inputs of the adapted model's forwards
    steps: tuple = ()
    save_options: dict = field(default_factory=dict)
    load_options: dict = field(default_factory=dict)
    requires: dict = field(default_factory=dict)
    tolerance: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def cells(self, full: bool = True):
        """(device, dtype, in_full_set_only) for every cell of the case; full=False leaves out full_dtypes."""
        for device in self.devices:
            for dtype in self.dtypes + (self.full_dtypes if full else ()):
                yield device, dtype, dtype not in self.dtypes

    @property
    def method(self) -> str:
        return self.adapter_type.removesuffix("Config").lower()

    @classmethod
    def from_dict(cls, data: dict, path: str = "<dict>") -> "Case":
        """Validate `data` (the parsed TOML) and build the record. Raises CaseError."""
        validate_case_data(data, path)
        adapter, model = data["adapter"], data.get("model", {})
        return cls(
            id=data["id"], family=data["family"], adapter_type=adapter["type"], save_mode=data["save"]["mode"],
            load_mode=data["load"]["mode"], path=str(path), description=data.get("description", ""),
            tags=tuple(data.get("tags", ())), references=tuple(data.get("references", ())),
            dtypes=tuple(data.get("dtypes", ("fp32",))), full_dtypes=tuple(data.get("full_dtypes", ())), devices=tuple(data.get("devices", DEVICES)),
            timeout_s=data.get("timeout_s"), model_config=dict(model.get("config", {})),
            load_kwargs=dict(model.get("load_kwargs", {})), adapter_apply=adapter.get("apply", "get_peft_model"),
            adapter_kwargs=dict(adapter.get("kwargs", {})), adapter_init=adapter.get("init", "fill"),
            adapter_calibration=adapter.get("calibration"),
            forward_kwargs=dict(adapter.get("forward_kwargs", {})),
            steps=tuple(dict(s) for s in data.get("steps", ())), save_options=dict(data["save"].get("options", {})),
            load_options=dict(data["load"].get("options", {})), requires=dict(data.get("requires", {})),
            tolerance=dict(data.get("tolerance", {})), raw=data,
        )


@lru_cache(maxsize=1)
def case_schema() -> dict:
    return json.loads(resources.files("harness.specs").joinpath("schemas/case.schema.json").read_text())


def _field_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":  # name the offending field itself
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts += extra[:1]
    elif error.validator == "required":
        missing = [r for r in error.validator_value if r not in error.instance]
        parts += missing[:1]
    return ".".join(parts)


def _message(error) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown field {extra[0]!r} (allowed here: {allowed})"
    if error.validator == "required":
        return "is required"
    return error.message


def validate_case_data(data: dict, path) -> None:
    """Schema first (shape, types, field names), then the harness registries and cross-field rules."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(case_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        raise CaseError(path, _field_path(errors[0]), _message(errors[0]))
    _validate_semantics(data, path)


def _validate_semantics(data: dict, path) -> None:
    """Cross-field rules that need no registry (the names a case uses are checked by harness.roundtrip.check)."""
    for package, spec in data.get("requires", {}).items():
        try:
            specifier = SpecifierSet(spec)
        except InvalidSpecifier:
            raise CaseError(path, f"requires.{package}", f"not a version specifier: {spec!r} (e.g. '>=0.14')")
        if not satisfiable(specifier):
            raise CaseError(path, f"requires.{package}", f"{spec!r} can never be met: no version satisfies it")
    if "timeout_s" in data:
        problem = timeout_problem(data["timeout_s"])
        if problem:
            raise CaseError(path, "timeout_s", problem)
    for dtype, value in data.get("tolerance", {}).items():  # the schema allows inf and nan: JSON has neither
        if dtype != "reason" and not (math.isfinite(value) and value > 0):
            raise CaseError(path, f"tolerance.{dtype}", f"{value!r}: a tolerance must be a finite number more than 0")
    if not data.get("dtypes", ["fp32"]) and not data.get("full_dtypes"):
        raise CaseError(path, "dtypes", "is empty and so is full_dtypes: the case would have no cell")
    overlap = set(data.get("full_dtypes", [])) & set(data.get("dtypes", ["fp32"]))
    if overlap:
        raise CaseError(path, "full_dtypes", f"{sorted(overlap)[0]!r} is already in dtypes")
    tolerance = data.get("tolerance", {})
    unknown_dtypes = set(tolerance) - {"reason"} - set(data.get("dtypes", ["fp32"])) - set(data.get("full_dtypes", []))
    if unknown_dtypes:
        raise CaseError(path, f"tolerance.{sorted(unknown_dtypes)[0]}", "tolerance for a dtype the case does not run")


def satisfiable(specifier: SpecifierSet) -> bool:
    """Whether any version satisfies `specifier`: probe the versions it mentions and their neighbours."""
    probes = {Version("0"), Version("9999")}
    for spec in specifier:
        try:
            v = Version(spec.version.replace(".*", ""))
        except Exception:
            return True  # arbitrary-equality and friends: do not second-guess
        rel = list(v.release) + [0, 0]
        probes |= {v, Version(f"{rel[0]}.{rel[1]}.{rel[2] + 1}"), Version(f"{rel[0]}.{rel[1] + 1}"),
                   Version(f"{rel[0] + 1}"), Version(f"{v.base_version}.post1")}
        if rel[2] > 0 or rel[1] > 0:
            probes.add(Version(f"{rel[0]}.{max(rel[1] - 1, 0)}"))
    return any(specifier.contains(p, prereleases=True) for p in probes)


def expand_matrix(data: dict, path) -> list[dict]:
    """A file with [matrix] family = [...] declares one case per family; `{family}` in the id (required)
    and in the description is replaced. Module names can use the families' groups ("@targets", ...)."""
    matrix = data.get("matrix")
    if matrix is None:
        return [data]
    if not isinstance(matrix, dict) or set(matrix) != {"family"}:
        raise CaseError(path, "matrix", "must be a table with exactly one key, family = [...]")
    families = matrix["family"]
    if not isinstance(families, list) or not families or not all(isinstance(f, str) for f in families):
        raise CaseError(path, "matrix.family", "must be a non-empty list of family names")
    if len(set(families)) != len(families):
        raise CaseError(path, "matrix.family", "lists a family twice")
    if "family" in data:
        raise CaseError(path, "family", "cannot be given together with matrix.family")
    if "{family}" not in str(data.get("id", "")):
        raise CaseError(path, "id", "must contain {family} when the file has a [matrix]")
    out = []
    for family in families:
        case = {k: v for k, v in data.items() if k != "matrix"}
        case["family"] = family
        case["id"] = data["id"].replace("{family}", family)
        if "description" in case:
            case["description"] = case["description"].replace("{family}", family)
        out.append(case)
    return out


def read_case_file(path) -> list[Case]:
    """Every case a file declares (one, or one per family of its [matrix])."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CaseError(path, "", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CaseError(path, "", f"not valid UTF-8 (byte {exc.start}): a case file is UTF-8 TOML") from None
    except OSError as exc:
        raise CaseError(path, "", f"cannot read: {exc.strerror}") from None
    return [Case.from_dict(d, path) for d in expand_matrix(data, path)]


def case_files(directory) -> list[Path]:
    return sorted(Path(directory).glob("*.toml"))


def discover_cases(*locations) -> list[Case]:
    """Every case under the folders (or in the case files) given, shape-validated; a duplicate id is an error
    naming both files. The names a case uses are checked by harness.roundtrip.check.load_cases."""
    cases, seen, visited = [], {}, set()
    for location in locations:
        if os.path.isdir(location):
            paths = case_files(location)
        elif os.path.isfile(location) and str(location).endswith(".toml"):
            paths = [Path(location)]
        elif os.path.exists(location):
            raise CaseError(location, "", "not a case folder or a .toml case file")
        else:
            raise CaseError(location, "", "case folder does not exist")
        for path in paths:
            real = os.path.realpath(path)
            if real in visited:  # the same folder or file given twice: read once
                continue
            visited.add(real)
            for case in read_case_file(path):
                if case.id in seen:
                    raise CaseError(path, "id", f"duplicate case id {case.id!r} (also in {seen[case.id]})")
                seen[case.id] = path
                cases.append(case)
    return cases
