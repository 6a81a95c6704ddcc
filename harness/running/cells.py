"""Cells as the fronts run them: which cells a selection means, and a cell's verdict with the known-issues
table applied. This is the one place a record gets classified (harness.specs.known_issues.classify); the
isolation layer calls `finish` on what its child sent back, and `run_cell` is the same for a cell run here.
"""
from __future__ import annotations

import fnmatch

from harness.roundtrip.cell import cell_id, run_roundtrip
from harness.specs import statuses
from harness.specs.known_issues import classify, load_known_issues


def finish(record: dict, known_issues) -> dict:
    """A raw record -> the table's verdict (expected-failure / fixed / unchanged), in place."""
    return classify(record, load_known_issues() if known_issues is None else known_issues)


def run_cell(case, device: str = "cpu", dtype: str = "fp32", *, known_issues=None, **kwargs) -> dict:
    """Run one cell in this process and return its record, classified against the known-issues table
    (default: the shipped one). kwargs go to harness.roundtrip.cell.run_roundtrip (bases, workdir,
    keep_artifacts, after_save, after_load, on_stage). Leaves no temporary folder behind unless asked to."""
    return finish(run_roundtrip(case, device, dtype, **kwargs), known_issues)


def select_cells(cases, devices=None, match=None, full: bool = True):
    """(case, device, dtype) of every cell of `cases` on `devices` whose id contains one of the `match`
    patterns or matches it as a glob; full=False leaves out the full-set dtypes."""
    for case in cases:
        for device, dtype, _ in case.cells(full=full):
            if devices and device not in devices:
                continue
            cid = cell_id(case.id, device, dtype)
            if match and not any(fnmatch.fnmatchcase(cid, pattern) or pattern in cid for pattern in match):
                continue
            yield case, device, dtype


class EmptySelection(ValueError):
    """A selection that matches no cell (printed as `error: ...`, exit 2): a mistyped -k or an empty case folder
    must not run nothing and call it a complete, green run."""


def selected_cells(cases, locations, devices=None, match=None, full: bool = True) -> list:
    """select_cells as a list; raises EmptySelection, saying what was selected from where, when it is empty."""
    cells = list(select_cells(cases, devices, match, full=full))
    if cells:
        return cells
    where = ", ".join(str(location) for location in locations)
    if not cases:
        raise EmptySelection(f"no cell matches: there is no case file in {where}")
    given = [f"-k {' -k '.join(repr(m) for m in match)}"] if match else []
    given += [f"--device {' --device '.join(devices)}"] if devices else []
    given += [] if full else ["--fast"]
    total = sum(1 for case in cases for _ in case.cells(full=full))
    raise EmptySelection(f"no cell matches {' '.join(given) or 'the selection'}: none of the {total} cell(s) of the "
                         f"{len(cases)} case(s) in {where}")


class GeneratedCaseFailure(AssertionError):
    """A generated case whose round trip failed in a way the known-issues table does not expect. The message
    ends with the case as a TOML file, ready to drop into cases/ as a named regression case."""


def check_generated(case_dict: dict, *, known_issues=None, **run_kwargs) -> dict:
    """Run a generated case (harness.roundtrip.strategies) on CPU fp32: a record that is not red holds,
    anything else raises GeneratedCaseFailure with the case as a ready case file."""
    from harness.roundtrip.check import case_from_dict
    from harness.specs.case_writer import case_to_toml

    record = run_cell(case_from_dict(case_dict, "<generated>"), "cpu", "fp32", known_issues=known_issues,
                      **run_kwargs)
    if statuses.is_red(record["status"]):
        raise GeneratedCaseFailure(
            f"generated case {record['cell_id']}: {record['status']} at stage {record['stage']!r}: "
            f"{record['exception_type']}: {(record['message'] or '')[:800]}\n\n"
            f"Save this as cases/<name>.toml (give it a real id) to keep it as a regression case:\n\n"
            f"{case_to_toml(case_dict)}")
    return record
