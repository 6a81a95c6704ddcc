"""Expected failures: one central table (known_issues.toml) of upstream bugs that versions are known to have,
and the one classifier that applies it.

A cell that fails at the listed stage, with a matching exception, on matching versions is an
"expected-failure". A listed issue whose cell passes is "fixed": reported loudly, never hidden. The versions
are those the record says it ran with (`record["environment"]`), never the caller's: the running layer
classifies a fresh record with it, and `merge --reclassify` re-applies a changed table to finished reports
with the very same function.
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

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from harness.specs import statuses
from harness.specs.case import DEVICES, DTYPES

STAGES = statuses.STAGES
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

    def applies_to(self, case_id: str, device: str, dtype: str, versions: dict) -> bool:
        """Whether the entry covers this cell on these versions ({package: version text})."""
        return (any(fnmatch.fnmatchcase(case_id, pattern) for pattern in self.cases)
                and device in self.devices and dtype in self.dtypes
                and versions_satisfy(self.versions, versions))

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
                SpecifierSet(spec)
            except InvalidSpecifier:
                raise KnownIssuesError(f"{where}: versions.{package}: not a version specifier: {spec!r}") from None
        issues.append(KnownIssue(
            cases=tuple(entry["cases"]), versions=dict(entry.get("versions", {})), stage=entry["stage"],
            reference=entry["reference"], note=entry.get("note", ""), exception=entry.get("exception"),
            devices=tuple(entry.get("devices", DEVICES)), dtypes=tuple(entry.get("dtypes", DTYPES)),
            intermittent=bool(entry.get("intermittent", False))))
    return issues


def load_known_issues(path=None) -> list[KnownIssue]:
    if path is None:
        text = resources.files("harness.specs").joinpath("known_issues.toml").read_text()
        source = "harness/specs/known_issues.toml"
    else:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise KnownIssuesError(f"{source}: cannot read the known-issues table: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise KnownIssuesError(f"{source}: not valid UTF-8 (byte {exc.start}): the table is UTF-8 TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KnownIssuesError(f"{source}: not valid TOML: {exc}") from None
    return parse_known_issues(data, source)


def release(text) -> Version | None:
    """A version text without local/dev parts ('2.13.0+cpu' -> 2.13.0); None when absent or unparsable."""
    if not text:
        return None
    try:
        return Version(Version(str(text)).base_version)
    except InvalidVersion:
        return None


def versions_satisfy(specifiers: dict, versions: dict) -> bool:
    """Whether every {package: specifier} holds for the recorded {package: version}; a package that was not
    recorded satisfies nothing."""
    for package, spec in specifiers.items():
        version = release(versions.get(package))
        if version is None or not SpecifierSet(spec).contains(version, prereleases=True):
            return False
    return True


def unclassify(record: dict) -> dict:
    """Undo classify, in place: the raw verdict the round trip observed, with no known issue attached."""
    if record["status"] in ("expected-failure", "fixed"):
        if record["status"] == "fixed":
            record["message"] = None
        record["status"] = record.get("observed_status") or statuses.BY_NAME[record["status"]].outcome
    record.pop("observed_status", None)
    record.pop("known_issue_mismatch", None)
    record["known_issue"] = None
    return record


def classify(record: dict, issues: list[KnownIssue]) -> dict:
    """Turn a raw verdict into the table's verdict, in place: expected-failure, fixed, or unchanged.
    The versions are the record's own (record["environment"])."""
    if record["status"] not in statuses.CLASSIFIABLE:
        return record
    versions = record.get("environment") or {}
    candidates = [k for k in issues
                  if k.applies_to(record["case_id"], record["device"], record["dtype"], versions)]
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
    elif all(k.intermittent for k in candidates):
        # a known intermittent bug that did not show this time: still a pass, with the issue attached
        record["known_issue"] = candidates[0].as_record()
    else:
        candidates = [k for k in candidates if not k.intermittent]
        record["observed_status"] = status
        record["status"] = "fixed"
        record["known_issue"] = candidates[0].as_record()
        record["message"] = (f"KNOWN ISSUE NO LONGER FAILS: {candidates[0].reference} was expected to fail at stage "
                             f"{candidates[0].stage!r} on {candidates[0].versions or 'all versions'}, but the round "
                             "trip passed. Update harness/specs/known_issues.toml.")
    return record
