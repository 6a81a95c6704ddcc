"""Since when: for every cell of a merged matrix, its outcome laid along the peft versions and along the
transformers versions. When one package's version alone explains the outcome, the change points are given
as "last version with the old outcome -> first version with the new one" (between two environments of the
matrix: `python -m harness bisect` finds the exact release)."""
from __future__ import annotations

from collections import defaultdict

from packaging.version import Version

from harness.specs import statuses
from harness.specs.known_issues import release


def outcome(entry: dict) -> str | None:
    """pass / fail@<stage> / n/a, or None where nothing was observed (skipped, env failed, missing).
    A failure keeps its stage, so a failure that moves (adapt -> load) is a change too; whether it is an
    expected failure or not is the known-issues table's business, not the library's behaviour."""
    result = statuses.outcome(entry["status"])
    if result == "fail" and entry.get("stage"):
        return f"fail@{entry['stage']}"
    return result


def _verb(result: str) -> str:
    if result.startswith("fail@"):
        return f"fails at {result[5:]}"
    return {"pass": "passes", "fail": "fails", "n/a": "is not applicable"}[result]


def _explain_by(package: str, observations: list[tuple[dict, str]]):
    """If the outcome is a function of `package`'s version, the runs of equal outcome along its versions."""
    by_version: dict[Version, set] = defaultdict(set)
    text_of: dict[Version, str] = {}
    for versions, result in observations:
        v = release(versions.get(package))
        if v is None:
            return None
        by_version[v].add(result)
        text_of[v] = str(versions.get(package))
    if any(len(results) > 1 for results in by_version.values()):
        return None
    runs = []  # [outcome, first version text, last version text]
    for v in sorted(by_version):
        result = next(iter(by_version[v]))
        if runs and runs[-1][0] == result:
            runs[-1][2] = text_of[v]
        else:
            runs.append([result, text_of[v], text_of[v]])
    return runs


def _describe(package: str, runs) -> str:
    parts = []
    for i, (result, first, last) in enumerate(runs):
        if i == 0:
            parts.append(f"{_verb(result)} for {package} <= {last}")
        elif i == len(runs) - 1:
            parts.append(f"{_verb(result)} from {package} {first}")
        else:
            parts.append(f"{_verb(result)} for {package} {first} .. {last}")
    return ", ".join(parts)


def since_for_cell(row: dict, envs: list[dict]) -> dict:
    observations = []
    for env in envs:
        result = outcome(row["entries"][env["name"]])
        if result is not None:
            observations.append((env["versions"], result, env["name"]))
    results = {o[1] for o in observations}
    base = {"cell_id": row["cell_id"], "case_id": row["case_id"], "observed_envs": len(observations)}
    if not observations:
        return {**base, "explained_by": None, "changes": [], "text": "not observed in any environment"}
    if len(results) == 1:
        only = next(iter(results))
        return {**base, "explained_by": None, "changes": [],
                "text": f"{_verb(only)} in every observed environment ({len(observations)})"}
    candidates = {}
    for package in ("peft", "transformers"):
        runs = _explain_by(package, [(o[0], o[1]) for o in observations])
        if runs is not None:
            candidates[package] = runs
    if not candidates:
        order = [f"{name}: {result}" for _, result, name in observations]
        return {**base, "explained_by": "both", "changes": [],
                "text": "depends on the peft x transformers combination: " + ", ".join(order)}
    # prefer the explanation with fewer changes; both explaining means the matrix cannot separate them
    ranked = sorted(candidates.items(), key=lambda kv: (len(kv[1]), kv[0] != "peft"))
    package, runs = ranked[0]
    changes = [{"package": package, "from": runs[i][0], "to": runs[i + 1][0], "last_before": runs[i][2],
                "first_after": runs[i + 1][1]} for i in range(len(runs) - 1)]
    text = _describe(package, runs)
    explained = package
    if len(candidates) == 2 and len(candidates["peft"]) == len(candidates["transformers"]):
        explained = "ambiguous"
        text += f" (or: {_describe('transformers', candidates['transformers'])}; no env pair separates them)"
    return {**base, "explained_by": explained, "changes": changes, "text": text}


def since_analysis(rows: list[dict], envs: list[dict]) -> list[dict]:
    return [since_for_cell(row, envs) for row in rows]
