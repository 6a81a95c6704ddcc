"""Expected failures: one central table (known_issues.toml) of upstream bugs that versions are known to have,
and the one classifier that applies it.

A cell that fails at the listed stage, with a matching exception (the entry's `exception` regex, or its named
`signature` class from signatures.py, which holds whatever wording the machine's torch uses), on matching
versions is an "expected-failure". A listed issue whose cell passes is "fixed": reported loudly, never hidden. The versions
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

from harness.specs import signatures, statuses
from harness.specs.case import DEVICES, DTYPES

STAGES = statuses.STAGES
_FIELDS = {"cases", "versions", "devices", "dtypes", "stage", "exception", "signature", "reference", "note",
           "intermittent", "bisected", "writer", "reader"}
# a cross-version read and its writer are "the same release" when these agree: such a read (the diagonal of
# the writer x reader table) is classified with the own-round-trip entries too
SAME_RELEASE_PACKAGES = ("peft", "transformers")
# a bisected edge: `python -m harness bisect` found the adjacent releases between which the cell changes.
# "failing" = shows this entry's failure; "passing" = does not (it may pass, or show another listed failure).
_EDGE_FIELDS = {"package", "first_failing", "last_passing", "last_failing", "first_passing", "date", "command",
                "cell", "held", "probes", "seconds", "untestable", "note", "side"}
_EDGE_PAIRS = (("last_passing", "first_failing"), ("last_failing", "first_passing"))  # (older, newer)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class BisectedEdge:
    """One range edge of an entry, found by bisection: `older` and `newer` are adjacent installable releases of
    `package`; `kind` is "starts" (older passes, newer fails: the bug came in) or "ends" (the fix came in)."""
    package: str
    kind: str
    older: str
    newer: str
    date: str
    command: str
    extra: tuple = ()
    side: str | None = None  # cross-version entries: "writer" or "reader", the specifier this edge pins

    @property
    def failing(self) -> str:
        return self.newer if self.kind == "starts" else self.older

    @property
    def passing(self) -> str:
        return self.older if self.kind == "starts" else self.newer


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
    signature: str | None = None  # a class of harness.specs.signatures: any wording of the same failure
    devices: tuple = DEVICES
    dtypes: tuple = DTYPES
    intermittent: bool = False  # the bug shows on some runs only (e.g. uninitialized memory): a pass is no "fix"
    bisected: tuple = ()  # BisectedEdge per range edge that `bisect` pinned to adjacent releases
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
        """The record failed at this entry's stage, and its "ExceptionType: message" matches the entry's
        `exception` regex or its `signature` class (either is enough; an entry with neither matches any)."""
        if record.get("stage") != self.stage:
            return False
        if self.exception is None and self.signature is None:
            return True
        text = signatures.failure_text(record)
        if self.signature is not None and signatures.matches(self.signature, text):
            return True
        return self.exception is not None and re.search(self.exception, text, re.S) is not None

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
        if "exception" in entry:
            try:
                re.compile(entry["exception"])
            except (re.error, TypeError) as exc:
                raise KnownIssuesError(f"{where}: exception: not a regular expression: {exc}") from None
        if "signature" in entry and entry["signature"] not in signatures.SIGNATURES:
            raise KnownIssuesError(f"{where}: signature {entry['signature']!r} is not one of "
                                   f"{', '.join(signatures.NAMES)} (harness/specs/signatures.py)")
        edges = tuple(_parse_edge(edge, entry, f"{where}: bisected[{j}]")
                      for j, edge in enumerate(entry.get("bisected", [])))
        issues.append(KnownIssue(
            cases=tuple(entry["cases"]), versions=dict(entry.get("versions", {})), stage=entry["stage"],
            reference=entry["reference"], note=entry.get("note", ""), exception=entry.get("exception"),
            signature=entry.get("signature"),
            devices=tuple(entry.get("devices", DEVICES)), dtypes=tuple(entry.get("dtypes", DTYPES)),
            intermittent=bool(entry.get("intermittent", False)), bisected=edges,
            writer=dict(entry["writer"]) if "writer" in entry else None,
            reader=dict(entry["reader"]) if "reader" in entry else None))
    return issues


def _parse_edge(edge, entry: dict, where: str) -> BisectedEdge:
    """A `bisected` item, checked against the entry: the failing release is inside the entry's specifier for
    that package, the passing one outside, and they are in the right order. In a cross-version entry the edge
    says which `side` it pins (`writer` or `reader`: `bisect --read-by` / `--read-from` found it)."""
    if not isinstance(edge, dict):
        raise KnownIssuesError(f"{where}: must be a table {{package = ..., first_failing = ..., ...}}")
    unknown = set(edge) - _EDGE_FIELDS
    if unknown:
        raise KnownIssuesError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    for required in ("package", "date", "command"):
        if required not in edge:
            raise KnownIssuesError(f"{where}: field {required!r} is required")
    cross = "writer" in entry or "reader" in entry
    side = edge.get("side")
    if cross and side not in ("writer", "reader"):
        raise KnownIssuesError(f"{where}: a cross-version entry's edge needs side = \"writer\" or \"reader\" "
                               "(which release's range it pins)")
    if not cross and side is not None:
        raise KnownIssuesError(f"{where}: side is for cross-version entries (writer / reader) only")
    table = side if cross else "versions"
    versions = dict(entry.get(table, {}))
    package = edge["package"]
    if package not in versions:
        raise KnownIssuesError(f"{where}: package {package!r} has no specifier in this entry's {table}: "
                               "a bisected edge pins the edge of a version range")
    pairs = [pair for pair in _EDGE_PAIRS if any(name in edge for name in pair)]
    if len(pairs) != 1 or not all(name in edge for name in pairs[0]):
        raise KnownIssuesError(f"{where}: give either last_passing + first_failing (the bug came in) or "
                               "last_failing + first_passing (the fix came in)")
    older_name, newer_name = pairs[0]
    parsed = {}
    for name in (older_name, newer_name):
        try:
            parsed[name] = Version(str(edge[name]))
        except InvalidVersion:
            raise KnownIssuesError(f"{where}: {name}: not a version: {edge[name]!r}") from None
    if not parsed[older_name] < parsed[newer_name]:
        raise KnownIssuesError(f"{where}: {older_name} {edge[older_name]} must be older than {newer_name} "
                               f"{edge[newer_name]}")
    if not _DATE.match(str(edge["date"])):
        raise KnownIssuesError(f"{where}: date {edge['date']!r} is not YYYY-MM-DD")
    if not str(edge["command"]).startswith("python -m harness bisect "):
        raise KnownIssuesError(f"{where}: command must be the `python -m harness bisect ...` that found the edge")
    kind = "starts" if older_name == "last_passing" else "ends"
    failing = newer_name if kind == "starts" else older_name
    passing = older_name if kind == "starts" else newer_name
    spec = SpecifierSet(versions[package])
    if not spec.contains(parsed[failing], prereleases=True):
        raise KnownIssuesError(f"{where}: {failing} {edge[failing]} is outside {table}.{package} "
                               f"{versions[package]!r}: the specifier does not match the bisected edge")
    if spec.contains(parsed[passing], prereleases=True):
        raise KnownIssuesError(f"{where}: {passing} {edge[passing]} is inside {table}.{package} "
                               f"{versions[package]!r}: the specifier does not match the bisected edge")
    extra = tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in edge.items()
                         if k not in ("package", older_name, newer_name, "date", "command", "side")))
    return BisectedEdge(package=package, kind=kind, older=str(edge[older_name]), newer=str(edge[newer_name]),
                        date=str(edge["date"]), command=str(edge["command"]), extra=extra, side=side)


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
