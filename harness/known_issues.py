"""Expected failures: one central table (known_issues.toml) of upstream bugs that versions are known to have.

A cell that fails at the listed stage, with a matching exception, on matching versions is an
"expected-failure". A listed issue whose cell passes is "fixed": reported loudly, never hidden.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # python < 3.11
    import tomli as tomllib

from . import compat
from .case import DEVICES, DTYPES

STAGES = ("build", "adapt", "save", "load", "forward", "compare")
_FIELDS = {"cases", "versions", "devices", "dtypes", "stage", "exception", "reference", "note", "intermittent"}


class KnownIssuesError(ValueError):
    pass


@dataclass(frozen=True)
class KnownIssue:
    cases: tuple
    versions: dict
    stage: str
    reference: str
    note: str = ""
    exception: str | None = None
    devices: tuple = DEVICES
    dtypes: tuple = DTYPES
    intermittent: bool = False  # the bug shows on some runs only (e.g. uninitialized memory): a pass is no "fix"

    def applies_to(self, case_id: str, device: str, dtype: str) -> bool:
        return (any(fnmatch.fnmatchcase(case_id, pattern) for pattern in self.cases)
                and device in self.devices and dtype in self.dtypes
                and not compat.unmet_requirements(self.versions))

    def explains(self, record: dict) -> bool:
        if record.get("stage") != self.stage:
            return False
        if self.exception is None:
            return True
        text = f"{record.get('exception_type') or ''}: {record.get('message') or ''}"
        return re.search(self.exception, text, re.S) is not None

    def as_record(self) -> dict:
        return {"reference": self.reference, "versions": self.versions, "stage": self.stage, "note": self.note,
                "intermittent": self.intermittent}


def parse_known_issues(data: dict, source: str = "known_issues.toml") -> list[KnownIssue]:
    issues = []
    for i, entry in enumerate(data.get("issue", [])):
        where = f"{source}: issue[{i}]"
        unknown = set(entry) - _FIELDS
        if unknown:
            raise KnownIssuesError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        for required in ("cases", "stage", "reference"):
            if required not in entry:
                raise KnownIssuesError(f"{where}: field {required!r} is required")
        if entry["stage"] not in STAGES:
            raise KnownIssuesError(f"{where}: stage {entry['stage']!r} is not one of {STAGES}")
        for package, spec in entry.get("versions", {}).items():
            try:
                compat.SpecifierSet(spec)
            except Exception:
                raise KnownIssuesError(f"{where}: versions.{package}: not a version specifier: {spec!r}") from None
        issues.append(KnownIssue(
            cases=tuple(entry["cases"]), versions=dict(entry.get("versions", {})), stage=entry["stage"],
            reference=entry["reference"], note=entry.get("note", ""), exception=entry.get("exception"),
            devices=tuple(entry.get("devices", DEVICES)), dtypes=tuple(entry.get("dtypes", DTYPES)),
            intermittent=bool(entry.get("intermittent", False))))
    return issues


def load_known_issues(path=None) -> list[KnownIssue]:
    if path is None:
        text = resources.files("harness").joinpath("known_issues.toml").read_text()
        source = "harness/known_issues.toml"
    else:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise KnownIssuesError(f"{source}: cannot read the known-issues table: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KnownIssuesError(f"{source}: not valid TOML: {exc}") from None
    return parse_known_issues(data, source)


def classify(record: dict, issues: list[KnownIssue]) -> dict:
    """Turn a raw verdict into the table's verdict, in place: expected-failure, fixed, or unchanged."""
    candidates = [k for k in issues if k.applies_to(record["case_id"], record["device"], record["dtype"])]
    if not candidates:
        return record
    status = record["status"]
    if status in ("fail", "error"):
        for issue in candidates:
            if issue.explains(record):
                record["observed_status"] = status
                record["status"] = "expected-failure"
                record["known_issue"] = issue.as_record()
                return record
        record["known_issue_mismatch"] = [
            f"{k.reference} expects a failure at stage {k.stage!r}"
            + (f" matching /{k.exception}/" if k.exception else "") for k in candidates]
    elif status == "pass" and all(k.intermittent for k in candidates):
        # a known intermittent bug that did not show this time: still a pass, with the issue attached
        record["known_issue"] = candidates[0].as_record()
    elif status == "pass":
        candidates = [k for k in candidates if not k.intermittent]
        record["observed_status"] = status
        record["status"] = "fixed"
        record["known_issue"] = candidates[0].as_record()
        record["message"] = (f"KNOWN ISSUE NO LONGER FAILS: {candidates[0].reference} was expected to fail at stage "
                             f"{candidates[0].stage!r} on {candidates[0].versions or 'all versions'}, but the round "
                             "trip passed. Update harness/known_issues.toml.")
    return record
