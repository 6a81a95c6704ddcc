"""Changes between two matrices (or single reports as one-column matrices): regressions, fixes, lost cells.
`python -m harness diff` prints them; the page and the summary (render.py, overview.py) lead with them when
`merge --previous OLD.json` names the previous table. Imports nothing but the status vocabulary, so that any
reporting module may use it.
"""
from __future__ import annotations

from harness.specs import statuses

SINGLE = "(report)"


def _bad(status: str) -> bool:
    """Not reproduced, or nothing to show: a failure (expected or not), a crash, an env that did not run, a
    missing cell. A known issue that passed ("fixed") is red for the run but good for the libraries."""
    return statuses.outcome(status) == "fail" or (statuses.is_red(status) and statuses.outcome(status) != "pass")


def _table(matrix: dict, rename_single: bool) -> dict:
    out = {}
    for row in matrix["cells"]:
        for env, entry in row["entries"].items():
            out[(SINGLE if rename_single else env, row["cell_id"])] = entry
    return out


def _fill_failed_envs(matrix: dict, table: dict, cells, single: bool) -> None:
    """An env that could not be set up has no cells in its report: every cell is env-failed there."""
    for env in matrix["environments"]:
        if env["state"] != "env-failed":
            continue
        name = SINGLE if single else env["name"]
        for cid in cells:
            table.setdefault((name, cid), {"status": "env-failed", "stage": None, "reason": env["reason"]})


def _any_env_ran(matrix: dict) -> bool:
    return any(env["state"] != "env-failed" for env in matrix["environments"])


def _incomplete_envs(matrix: dict, single: bool) -> list[dict]:
    """The environments of a side whose report did not finish (complete: false) or that could not run."""
    return [{"env": SINGLE if single else env["name"], "state": env["state"],
             "reason": env.get("reason") or "no reason given"}
            for env in matrix["environments"] if env["state"] != "ok"]


def compare(old: dict, new: dict) -> dict:
    single = bool(old.get("_single") and new.get("_single"))
    old_envs = [SINGLE] if single else [e["name"] for e in old["environments"]]
    new_envs = [SINGLE] if single else [e["name"] for e in new["environments"]]
    old_cells = {r["cell_id"] for r in old["cells"]}
    new_cells = {r["cell_id"] for r in new["cells"]}
    a, b = _table(old, single), _table(new, single)
    _fill_failed_envs(old, a, old_cells | new_cells, single)
    _fill_failed_envs(new, b, old_cells | new_cells, single)
    # a side whose every environment failed to set up says nothing about which cells exist
    old_ran, new_ran = _any_env_ran(old), _any_env_ran(new)
    result = {"regressions": [], "fixes": [], "changes": [], "lost": [],
              "new_cells": sorted(new_cells - old_cells) if old_ran else [],
              "removed_cells": sorted(old_cells - new_cells) if new_ran else [],
              "new_envs": [e for e in new_envs if e not in old_envs],
              "removed_envs": [e for e in old_envs if e not in new_envs],
              "incomplete": _incomplete_envs(new, single)}
    # lost: a cell of the old run that the new run does not show at all, or that an environment recorded
    # before and lacks now ("missing" in the merged table)
    result["lost"] = [{"env": None, "cell_id": cid, "old": None, "new": None, "stage": None,
                       "reason": "in the old run, not in the new one"} for cid in result["removed_cells"]]
    for key in sorted(set(a) & set(b)):
        before, after = a[key]["status"], b[key]["status"]
        if before == after:
            continue
        item = {"env": key[0], "cell_id": key[1], "old": before, "new": after, "stage": b[key].get("stage"),
                "reason": b[key].get("reason")}
        if after == "missing" and before not in statuses.MATRIX_ONLY:
            result["lost"].append(item)
        elif statuses.outcome(before) == "pass" and _bad(after):
            result["regressions"].append(item)
        elif _bad(before) and statuses.outcome(after) == "pass":
            result["fixes"].append(item)
        else:
            result["changes"].append(item)
    return result
