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

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from harness.specs import signatures, statuses
from harness.specs.tables import read_table
from harness.specs.case import DEVICES, DTYPES

STAGES = statuses.STAGES
_FIELDS = {"cases", "versions", "devices", "dtypes", "stage", "exception", "signature", "reference", "note",
           "intermittent", "bisected", "writer", "reader", "when", "across"}
# a cross-version read and its writer are "the same release" when these agree: such a read (the diagonal of
# the writer x reader table) is classified with the own-round-trip entries too
SAME_RELEASE_PACKAGES = ("peft", "transformers")
# a bisected edge: `python -m harness bisect` found the adjacent releases between which the cell changes.
# "failing" = shows this entry's failure; "passing" = does not (it may pass, or show another listed failure).
_EDGE_FIELDS = {"package", "first_failing", "last_passing", "last_failing", "first_passing", "date", "command",
                "cell", "held", "probes", "seconds", "untestable", "note", "side"}
_EDGE_PAIRS = (("last_passing", "first_failing"), ("last_failing", "first_passing"))  # (older, newer)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# Relations between a cross-version read's writer and reader that version specifiers cannot say, named in an
# entry's `when` (cross-version entries only). Each is a fact the reader recorded while it read; the entry
# applies only to reads where it holds, so a read where it does not hold is neither explained nor "fixed".
WHEN = {
    # the writer saved adapter-config fields that the reader's config class does not know (the read records them
    # before it loads: record["dropped_config_fields"]); e.g. a newer peft's new options in an older peft
    "config-fields-unknown-to-reader": lambda record: bool(record.get("dropped_config_fields")),
    # the reader's base computes exactly the writer's base logits (record["base_drift"] == 0), so the read is
    # judged within the cell's own tolerance; with a drift the bound widens (harness/artifacts/read.py) and a
    # difference of a few units in the last place may pass: such a pass says nothing about the entry
    "base-logits-identical": lambda record: record.get("base_drift") == 0,
}


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
    when: tuple = ()  # cross-version entry: names in WHEN that must all hold for the read
    across: dict | None = None  # cross-version entry: {package: (releases,)}: the read crosses one of them

    def crosses(self, writer: dict, reader: dict) -> bool:
        """Per package of `across`: the writer's and the reader's release lie on two sides of one of its releases
        (the saved format or the computation changed there; either direction)."""
        for package, bounds in (self.across or {}).items():
            w, r = release(writer.get(package)), release(reader.get(package))
            if w is None or r is None or not any((w < bound) != (r < bound) for bound in bounds):
                return False
        return True

    @property
    def cross(self) -> bool:
        """A cross-version entry (writer / reader) applies to reads of another release's artifacts only."""
        return self.writer is not None or self.reader is not None or self.across is not None

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
                    and versions_satisfy(self.reader or {}, versions) and self.crosses(writer, versions)
                    and all(WHEN[name](record) for name in self.when))
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

    def where(self) -> str:
        """The versions the entry covers, in words: "{'peft': '<0.14'}", or writer / reader / when."""
        if not self.cross:
            return str(self.versions or "all versions")
        text = f"writer {self.writer or 'any'}, reader {self.reader or 'any'}"
        if self.across:
            text += ", across " + ", ".join(f"{p} {' / '.join(map(str, b))}" for p, b in self.across.items())
        return text + (f", when {' and '.join(self.when)}" if self.when else "")

    def as_record(self) -> dict:
        out = {"reference": self.reference, "versions": self.versions, "stage": self.stage, "note": self.note,
               "intermittent": self.intermittent}
        if self.cross:
            out.update(writer=self.writer or {}, reader=self.reader or {})
        if self.when:
            out["when"] = list(self.when)
        if self.across:
            out["across"] = {p: [str(v) for v in b] for p, b in self.across.items()}
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
        cross = any(k in entry for k in ("writer", "reader", "across"))
        if "versions" in entry and cross:
            raise KnownIssuesError(f"{where}: give `versions` (an own round trip) or `writer` / `reader` / `across` "
                                   "(a cross-version read), not both")
        across = _parse_across(entry.get("across"), where)
        for table in ("versions", "writer", "reader"):
            for package, spec in entry.get(table, {}).items():
                try:
                    SpecifierSet(spec)
                except InvalidSpecifier:
                    raise KnownIssuesError(f"{where}: {table}.{package}: not a version specifier: {spec!r}") from None
        when = entry.get("when", [])
        if when and not cross:
            raise KnownIssuesError(f"{where}: when is for cross-version entries (writer / reader / across) only")
        if not isinstance(when, list) or any(name not in WHEN for name in when):
            raise KnownIssuesError(f"{where}: when must be a list of: {', '.join(sorted(WHEN))}")
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
            reader=dict(entry["reader"]) if "reader" in entry else None, when=tuple(when), across=across))
    return issues


def _parse_across(across, where: str) -> dict | None:
    """`across = { peft = ["0.16.0", "0.18.0"] }`: releases of a package where a read changes outcome."""
    if across is None:
        return None
    if not isinstance(across, dict) or not across:
        raise KnownIssuesError(f"{where}: across must be a table {{package = [release, ...]}}")
    out = {}
    for package, bounds in across.items():
        if not isinstance(bounds, list) or not bounds:
            raise KnownIssuesError(f"{where}: across.{package}: a list of releases, e.g. [\"0.16.0\"]")
        try:
            out[package] = tuple(sorted(Version(str(b)) for b in bounds))
        except InvalidVersion:
            raise KnownIssuesError(f"{where}: across.{package}: not a release in {bounds!r}") from None
    return out


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
    cross = any(k in entry for k in ("writer", "reader", "across"))
    side = edge.get("side")
    if cross and side not in ("writer", "reader"):
        raise KnownIssuesError(f"{where}: a cross-version entry's edge needs side = \"writer\" or \"reader\" "
                               "(which release's range it pins)")
    if not cross and side is not None:
        raise KnownIssuesError(f"{where}: side is for cross-version entries (writer / reader) only")
    table = side if cross else "versions"
    versions = dict(entry.get(table, {}))
    package = edge["package"]
    across = (entry.get("across") or {}).get(package) if package not in versions else None
    if package not in versions and across is None:
        raise KnownIssuesError(f"{where}: package {package!r} has no specifier in this entry's {table} (nor an "
                               "`across` release): a bisected edge pins the edge of a version range")
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
    if across is not None:  # the edge must straddle one of the releases the read crosses
        if not any(parsed[older_name] < Version(str(b)) <= parsed[newer_name] for b in across):
            raise KnownIssuesError(f"{where}: {edge[older_name]} .. {edge[newer_name]} straddles none of across."
                                   f"{package} {across!r}: the releases do not match the bisected edge")
        spec = None
    else:
        spec = SpecifierSet(versions[package])
    if spec is None:
        pass
    elif not spec.contains(parsed[failing], prereleases=True):
        raise KnownIssuesError(f"{where}: {failing} {edge[failing]} is outside {table}.{package} "
                               f"{versions[package]!r}: the specifier does not match the bisected edge")
    if spec is not None and spec.contains(parsed[passing], prereleases=True):
        raise KnownIssuesError(f"{where}: {passing} {edge[passing]} is inside {table}.{package} "
                               f"{versions[package]!r}: the specifier does not match the bisected edge")
    extra = tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in edge.items()
                         if k not in ("package", older_name, newer_name, "date", "command", "side")))
    return BisectedEdge(package=package, kind=kind, older=str(edge[older_name]), newer=str(edge[newer_name]),
                        date=str(edge["date"]), command=str(edge["command"]), extra=extra, side=side)


def load_known_issues(path=None) -> list[KnownIssue]:
    """The shipped table, or the one at `path`."""
    data, source = read_table("known_issues.toml", path, KnownIssuesError, "known-issues table")
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


# The stages a reader runs its own code in; an own-round-trip entry at one of these stages describes the reader's
# release wherever its adapter came from (the read has no adapt stage: such a bug shows at its first forward).
READER_STAGES = ("adapt", "load", "forward", "compare")


def carried_over(record: dict, issues: list[KnownIssue]) -> tuple[KnownIssue, str] | None:
    """For a cross-version read that failed: the own-round-trip entry of one of the two releases that explains it,
    and which ("writer" / "reader"). Never a "fixed": a read that passes says nothing about either release's bug.
    - writer: the writer's own round trip did not reproduce the logits either (its verdict: an expected failure at
      compare), and the read fails at compare: the entry that explains the writer's failure explains the read's;
    - reader: an entry at a stage the reader runs (READER_STAGES) applies to the reader's release and explains the
      failure by its exception or signature (the stage may differ: adapt's forward is the read's forward)."""
    writer = record.get("writer")
    if writer is None or record.get("stage") == "build":
        return None
    verdict = writer.get("verdict") or {}
    if (record.get("stage") == "compare" and verdict.get("status") == "expected-failure"
            and verdict.get("stage") == "compare"):
        as_writer = {**record, "environment": writer, "writer": None}
        for issue in issues:
            if not issue.cross and issue.stage == "compare" and issue.applies_to(as_writer) and issue.explains(record):
                return issue, "writer"
    as_reader = {**record, "writer": None}
    for issue in issues:
        if (not issue.cross and issue.stage in READER_STAGES and issue.applies_to(as_reader)
                and issue.explains({**record, "stage": issue.stage})):
            return issue, "reader"
    return None


def classify(record: dict, issues: list[KnownIssue]) -> dict:
    """Turn a raw verdict into the table's verdict, in place: expected-failure, fixed, or unchanged.
    The versions are the record's own (record["environment"], and record["writer"] for a cross-version read)."""
    if record["status"] not in statuses.CLASSIFIABLE:
        return record
    candidates = [k for k in issues if k.applies_to(record)]
    status = record["status"]
    if status in statuses.RAW_FAILURES:
        for issue in candidates:
            if issue.explains(record):
                record["observed_status"] = status
                record["status"] = "expected-failure"
                record["known_issue"] = issue.as_record()
                return record
        carried = carried_over(record, issues)
        if carried is not None:
            record["observed_status"] = status
            record["status"] = "expected-failure"
            record["known_issue"] = {**carried[0].as_record(), "carried_from": carried[1]}
            return record
    if not candidates:
        return record
    if status in statuses.RAW_FAILURES:
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
                             f"{candidates[0].stage!r} on {candidates[0].where()}, but the round trip passed. Update "
                             "harness/specs/known_issues.toml.")
    return record
