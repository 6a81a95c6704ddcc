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
_FIELDS = {"cases", "versions", "devices", "dtypes", "stage", "exception", "reference", "note", "intermittent",
           "writer", "reader"}
# a cross-version read and its writer are "the same release" when these agree: such a read (the diagonal of
# the writer x reader table) is classified with the own-round-trip entries too
SAME_RELEASE_PACKAGES = ("peft", "transformers")


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
    writer: dict | None = None  # cross-version entry: specifiers for the release that saved ...
    reader: dict | None = None  # ... and for the release that loads

    @property
    def cross(self) -> bool:
        """A cross-version entry (writer / reader) applies to reads of another release's artifacts only."""
        return self.writer is not None or self.reader is not None

    def applies_to(self, record: dict) -> bool:
        """Whether the entry covers this record's cell on the versions it ran with: an own round trip
        (versions = record["environment"]) or a cross-version read (record["writer"] and the reader's
        record["environment"]; a read of the same release also takes the own-round-trip entries)."""
        if not (any(fnmatch.fnmatchcase(record["case_id"], pattern) for pattern in self.cases)
                and record["device"] in self.devices and record["dtype"] in self.dtypes):
            return False
        versions, writer = record.get("environment") or {}, record.get("writer")
        if self.cross:
            return (writer is not None and versions_satisfy(self.writer or {}, writer)
                    and versions_satisfy(self.reader or {}, versions))
        if writer is not None and any(release(writer.get(p)) != release(versions.get(p))
                                      for p in SAME_RELEASE_PACKAGES):
            return False
        return versions_satisfy(self.versions, versions)

    def explains(self, record: dict) -> bool:
        if record.get("stage") != self.stage:
            return False
        if self.exception is None:
            return True
        text = f"{record.get('exception_type') or ''}: {record.get('message') or ''}"
        return re.search(self.exception, text, re.S) is not None

    def as_record(self) -> dict:
        out = {"reference": self.reference, "versions": self.versions, "stage": self.stage, "note": self.note,
               "intermittent": self.intermittent}
        if self.cross:
            out.update(writer=self.writer or {}, reader=self.reader or {})
        return out


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
        if "versions" in entry and ("writer" in entry or "reader" in entry):
            raise KnownIssuesError(f"{where}: give `versions` (an own round trip) or `writer` / `reader` (a "
                                   "cross-version read), not both")
        for table in ("versions", "writer", "reader"):
            for package, spec in entry.get(table, {}).items():
                try:
                    SpecifierSet(spec)
                except InvalidSpecifier:
                    raise KnownIssuesError(f"{where}: {table}.{package}: not a version specifier: {spec!r}") from None
        issues.append(KnownIssue(
            cases=tuple(entry["cases"]), versions=dict(entry.get("versions", {})), stage=entry["stage"],
            reference=entry["reference"], note=entry.get("note", ""), exception=entry.get("exception"),
            devices=tuple(entry.get("devices", DEVICES)), dtypes=tuple(entry.get("dtypes", DTYPES)),
            intermittent=bool(entry.get("intermittent", False)),
            writer=dict(entry["writer"]) if "writer" in entry else None,
            reader=dict(entry["reader"]) if "reader" in entry else None))
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
    if record["status"] in statuses.FROM_TABLE:
        if record["status"] == "fixed":
            record["message"] = None
        record["status"] = record.get("observed_status") or statuses.BY_NAME[record["status"]].outcome
    record.pop("observed_status", None)
    record.pop("known_issue_mismatch", None)
    record["known_issue"] = None
    return record


def classify(record: dict, issues: list[KnownIssue]) -> dict:
    """Turn a raw verdict into the table's verdict, in place: expected-failure, fixed, or unchanged.
    The versions are the record's own (record["environment"], and record["writer"] for a cross-version read)."""
    if record["status"] not in statuses.CLASSIFIABLE:
        return record
    candidates = [k for k in issues if k.applies_to(record)]
    if not candidates:
        return record
    status = record["status"]
    if status in statuses.RAW_FAILURES:
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
