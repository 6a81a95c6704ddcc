"""The report validates against its versioned schema, is written atomically and keeps one record per cell."""
from __future__ import annotations

import copy
import json
import os

import pytest

from harness.roundtrip.environment import environment
from harness import load_case_file, run_cell
from harness.reporting.report import (SCHEMA_VERSION, ReportError, build_report, read_report, validate_report, write_json_atomic,
                            write_report)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from tests.conftest import BERT_LORA, to_toml

    d = tmp_path_factory.mktemp("cases")
    path = d / "c.toml"
    path.write_text(to_toml(BERT_LORA))
    case = load_case_file(path)
    return [run_cell(case, "cpu", "fp32", known_issues=[]), run_cell(case, "cuda", "fp32", known_issues=[])]


def test_real_records_validate_and_read_back(records, tmp_path):
    path = tmp_path / "r.json"
    report = write_report(str(path), records, environment=environment())
    assert report["schema_version"] == SCHEMA_VERSION
    back = read_report(str(path))
    assert [c["cell_id"] for c in back["cells"]] == sorted(c["cell_id"] for c in records)
    assert back["summary"] == {"pass": 1, "skipped": 1}
    assert back["complete"] is True
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []


def test_a_later_record_of_the_same_cell_replaces_the_earlier(records):
    again = copy.deepcopy(records[0])
    again["status"] = "fail"
    report = build_report(records + [again], environment=environment())
    assert len(report["cells"]) == 2
    assert {c["status"] for c in report["cells"]} == {"fail", "skipped"}


@pytest.mark.parametrize("breakage, where", [
    (lambda c: c.pop("stage"), "cells/0"),
    (lambda c: c.update(status="passed"), "cells/0/status"),
    (lambda c: c.update(stage="saving"), "cells/0/stage"),
    (lambda c: c.update(tolerance=0), "cells/0/tolerance"),
    (lambda c: c["environment"].pop("peft"), "cells/0/environment"),
])
def test_schema_rejects_broken_cells(records, breakage, where):
    report = build_report(copy.deepcopy(records[:1]), environment=environment())
    breakage(report["cells"][0])
    with pytest.raises(ReportError, match=where):
        validate_report(report, "x.json")


def test_read_report_rejects_non_json_and_foreign_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match=r"bad\.json: not JSON"):
        read_report(str(bad))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"cells": []}))
    with pytest.raises(ReportError, match=r"other\.json: does not match the report schema"):
        read_report(str(other))


def test_non_finite_numbers_become_null(records):
    rec = copy.deepcopy(records[0])
    rec["max_abs_diff"] = float("nan")
    report = build_report([rec], environment=environment())
    assert report["cells"][0]["max_abs_diff"] is None
    json.dumps(report, allow_nan=False)


def test_invalid_records_are_refused_before_writing(records, tmp_path):
    path = tmp_path / "r.json"
    write_report(str(path), records, environment=environment())
    before = path.read_text()
    with pytest.raises(ReportError, match="cells/2/message"):
        write_report(str(path), records + [{**records[0], "cell_id": "z", "message": object()}], environment=environment())
    assert path.read_text() == before


def test_a_write_that_breaks_halfway_leaves_previous_report_intact(records, tmp_path):
    path = tmp_path / "r.json"
    write_report(str(path), records, environment=environment())
    before = path.read_text()
    with pytest.raises(TypeError):  # json.dump fails after writing part of the document
        write_json_atomic(str(path), {"cells": [{"ok": 1}, {"bad": object()}]})
    assert path.read_text() == before
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []
