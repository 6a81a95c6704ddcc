"""Releases of a package as the package index lists them (PyPI's JSON API), and the "contemporary" pairing rule
that `bisect` uses to pick the other package's release for a candidate.

A release is listed when it is final (no pre-, dev- or post-release suffix games: Version.is_prerelease is
False), at least one of its files is not yanked, and its Requires-Python admits the interpreter that will run
it. The index answer is cached for a few hours under the bisect cache (~/.cache/peft-compat/index/), and a
stale copy is used when the index cannot be reached (said on stderr).
"""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

INDEX_JSON = os.environ.get("PEFT_COMPAT_INDEX_JSON", "https://pypi.org/pypi/{package}/json")
INDEX_TTL_S = 6 * 3600


class IndexError_(RuntimeError):
    """The package index could not be read and there is no cached copy."""


@dataclass(frozen=True, order=True)
class Release:
    version: Version
    text: str
    uploaded: datetime  # the earliest upload time of its files (UTC)

    def __str__(self) -> str:
        return self.text


def cache_dir() -> str:
    return os.environ.get("PEFT_COMPAT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "peft-compat")


def _fetch_json(package: str, *, ttl_s: float = INDEX_TTL_S, cache: str | None = None, log=None) -> dict:
    path = os.path.join(cache or cache_dir(), "index", f"{package}.json")
    fresh = os.path.exists(path) and time.time() - os.path.getmtime(path) < ttl_s
    if not fresh:
        url = INDEX_JSON.format(package=package)
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                data = json.load(resp)
        except (OSError, ValueError) as exc:
            if not os.path.exists(path):
                raise IndexError_(f"cannot list the releases of {package} from {url}: {exc}") from None
            (log or (lambda m: print(m, file=sys.stderr)))(
                f"warning: the package index is unreachable ({exc}); using the cached list of {package} releases "
                f"from {datetime.fromtimestamp(os.path.getmtime(path)).isoformat(timespec='minutes')}")
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"releases": data.get("releases", {})}, fh)
            os.replace(tmp, path)
            return data
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def releases_from_json(data: dict, python: str | None = None) -> list[Release]:
    """The installable final releases in an index JSON answer ({"releases": {version: [file, ...]}}),
    oldest first. `python` ("3.11.7"): leave out releases whose Requires-Python excludes it."""
    out = []
    py = Version(python) if python else None
    for text, files in data.get("releases", {}).items():
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        if version.is_prerelease or version.is_devrelease or not files:
            continue
        live = [f for f in files if not f.get("yanked")]
        if not live:
            continue
        if py is not None:
            requires = next((f.get("requires_python") for f in live if f.get("requires_python")), None)
            if requires:
                try:
                    if not SpecifierSet(requires).contains(py, prereleases=True):
                        continue
                except InvalidSpecifier:
                    pass
        uploaded = min(_parse_time(f) for f in live)
        out.append(Release(version, text, uploaded))
    return sorted(out)


def _parse_time(file: dict) -> datetime:
    text = file.get("upload_time_iso_8601") or file.get("upload_time") or "1970-01-01T00:00:00"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def list_releases(package: str, *, python: str | None = None, cache: str | None = None, log=None) -> list[Release]:
    return releases_from_json(_fetch_json(package, cache=cache, log=log), python)


def contemporary(candidate: Release, others: list[Release]) -> Release | None:
    """The release of the other package to pair `candidate` with: the newest one uploaded before the candidate
    itself. That is the release the candidate was developed and tested against (its CI ran on it), so the pair
    installs and imports; a later one may already have broken it (e.g. transformers 5 removed names that
    older peft imports). None when the other package had no release yet."""
    before = [r for r in others if r.uploaded <= candidate.uploaded]
    return before[-1] if before else None


def between(releases: list[Release], low: Version, high: Version) -> list[Release]:
    """The releases from `low` to `high`, both included, oldest first."""
    return [r for r in releases if low <= r.version <= high]


def find(releases: list[Release], text: str) -> Release:
    version = Version(text)
    for r in releases:
        if r.version == version:
            return r
    raise LookupError(f"{text} is not an installable release in the index (final, not yanked, for this Python)")
