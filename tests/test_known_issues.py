"""Known issues turn matching failures into expected-failures and a passing listed cell into "fixed"."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import load_case_file, load_cases, run_cell
from harness.specs.known_issues import KnownIssuesError, classify, load_known_issues, parse_known_issues

ROOT = Path(__file__).resolve().parents[1]


def record(status="error", stage="save", exc="builtins.RuntimeError", msg="boom", case_id="c-1",
           versions=None):
    """A raw record; the classifier reads the versions it ran with from its environment block."""
    return {"case_id": case_id, "device": "cpu", "dtype": "fp32", "status": status, "stage": stage,
            "exception_type": exc, "message": msg,
            "environment": versions or {"peft": "0.21.2", "transformers": "5.23.0", "torch": "2.13.0+cpu"}}


def issues(**entry):
    base = {"cases": ["c-*"], "stage": "save", "reference": "https://example.invalid/issue/1"}
    base.update(entry)
    return parse_known_issues({"issue": [base]})


def test_matching_failure_is_expected():
    out = classify(record(), issues(exception="RuntimeError: boom"))
    assert out["status"] == "expected-failure" and out["observed_status"] == "error"
    assert out["known_issue"]["reference"] == "https://example.invalid/issue/1"


def test_failure_at_another_stage_stays_a_failure_and_says_why():
    out = classify(record(stage="load"), issues())
    assert out["status"] == "error"
    assert "expects a failure at stage 'save'" in out["known_issue_mismatch"][0]


def test_failure_with_another_exception_stays_a_failure():
    assert classify(record(msg="other"), issues(exception="boom$"))["status"] == "error"
    assert classify(record(msg="other"), issues(exception="RuntimeError: boom"))["status"] == "error"


def test_a_known_issue_that_passes_is_reported_fixed():
    out = classify(record(status="pass", stage=None), issues())
    assert out["status"] == "fixed" and out["observed_status"] == "pass"
    assert "KNOWN ISSUE NO LONGER FAILS" in out["message"]


def test_version_specifier_limits_the_entry():
    never = issues(versions={"peft": "<0.0.1"})
    assert classify(record(), never)["status"] == "error"
    assert classify(record(status="pass", stage=None), never)["status"] == "pass"
    always = issues(versions={"peft": ">=0.0.1", "torch": ">=1"})
    assert classify(record(), always)["status"] == "expected-failure"


def test_the_versions_are_the_records_own_not_the_running_process():
    entry = issues(versions={"peft": "<0.14"})
    assert classify(record(versions={"peft": "0.13.2"}), entry)["status"] == "expected-failure"
    assert classify(record(versions={"peft": "0.14.0"}), entry)["status"] == "error"
    assert classify(record(versions={"transformers": "4.57.6"}), entry)["status"] == "error"  # peft not recorded


def test_device_and_dtype_limit_the_entry():
    assert classify(record(), issues(dtypes=["bf16"]))["status"] == "error"
    assert classify(record(), issues(devices=["cpu"]))["status"] == "expected-failure"


@pytest.mark.parametrize("entry, words", [
    ({"cases": ["x"], "stage": "save"}, "'reference' is required"),
    ({"cases": ["x"], "stage": "saving", "reference": "r"}, "stage 'saving'"),
    ({"cases": ["x"], "stage": "save", "reference": "r", "versoins": {}}, "unknown field 'versoins'"),
    ({"cases": ["x"], "stage": "save", "reference": "r", "versions": {"peft": "new"}}, "versions.peft"),
])
def test_malformed_table_is_rejected(entry, words):
    with pytest.raises(KnownIssuesError, match=words):
        parse_known_issues({"issue": [entry]})


def test_every_shipped_entry_names_existing_cases_and_a_reference():
    import fnmatch

    from harness.roundtrip.strategies import all_generated_ids

    ids = [c.id for c in load_cases(ROOT / "cases")] + all_generated_ids()
    for issue in load_known_issues():
        # an upstream issue/PR, or a finding of this harness that nobody reported yet, said so in words
        assert issue.reference.startswith(("https://github.com/", "unreported: ")), issue
        for pattern in issue.cases:
            assert fnmatch.filter(ids, pattern), f"known issue pattern {pattern!r} matches no case"


def test_fixed_end_to_end_with_a_real_passing_cell(write_case):
    """A table that claims a passing cell fails is caught: the real run reports "fixed"."""
    case = load_case_file(write_case())
    out = run_cell(case, "cpu", "fp32", known_issues=issues(cases=[case.id], stage="compare"))
    assert out["status"] == "fixed" and out["observed_status"] == "pass"


def test_unreadable_or_malformed_table_is_a_clear_error(tmp_path):
    with pytest.raises(KnownIssuesError, match=r"nope\.toml: cannot read"):
        load_known_issues(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[issue]\ncases = 1")
    with pytest.raises(KnownIssuesError, match=r"bad\.toml: not valid TOML"):
        load_known_issues(bad)


def test_an_intermittent_issue_that_does_not_show_is_a_pass_not_a_fix():
    out = classify(record(status="pass", stage=None), issues(intermittent=True))
    assert out["status"] == "pass" and out["known_issue"]["intermittent"] is True
    assert classify(record(), issues(intermittent=True))["status"] == "expected-failure"


def _bound_edges(issue):
    """(side, package, operator, version) of every range bound in an entry's specifiers; side is None for an own
    round trip's `versions`, "writer" / "reader" for a cross-version entry's."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    tables = [(None, issue.versions)] if not issue.cross else [("writer", issue.writer or {}),
                                                               ("reader", issue.reader or {})]
    for side, versions in tables:
        for package, spec in versions.items():
            for clause in SpecifierSet(spec):
                if clause.operator in (">=", ">", "<", "<="):
                    yield side, package, clause.operator, Version(clause.version)


def test_every_range_edge_of_the_shipped_table_was_bisected():
    """Issue 10: a range edge is the exact release `python -m harness bisect` found, recorded in the entry
    (bisected = [...]), never a guess between two releases the matrix happens to pin."""
    from packaging.version import Version

    missing = []
    for issue in load_known_issues():
        for side, package, op, bound in _bound_edges(issue):
            def straddles(edge):
                failing, passing = Version(edge.failing), Version(edge.passing)
                if op in (">=", ">"):
                    return edge.kind == "starts" and passing < bound <= failing if op == ">=" else \
                        edge.kind == "starts" and passing <= bound < failing
                return edge.kind == "ends" and failing < bound <= passing if op == "<" else \
                    edge.kind == "ends" and failing <= bound < passing
            if not any(edge.package == package and edge.side == side and straddles(edge) for edge in issue.bisected):
                missing.append(f"{issue.cases[0]} ({issue.reference}): {side or 'versions'} {package}{op}{bound}")
        # a release an entry's reads cross (`across`): pinned on both sides, the writer's and the reader's
        for package, bounds in (issue.across or {}).items():
            for bound in bounds:
                for side in ("writer", "reader"):
                    if not any(edge.package == package and edge.side == side
                               and Version(edge.older) < bound <= Version(edge.newer) for edge in issue.bisected):
                        missing.append(f"{issue.cases[0]} ({issue.reference}): {side} across {package} {bound}")
    assert not missing, "range edges without a bisected record:\n" + "\n".join(missing)


@pytest.mark.parametrize("edge, words", [
    ({"package": "peft", "first_failing": "0.12.0", "last_passing": "0.11.1", "date": "2026-11-23",
      "command": "python -m harness bisect c --package peft"}, None),
    ({"package": "peft", "first_failing": "0.12.0", "date": "2026-11-23", "command": "python -m harness bisect c"},
     "either last_passing"),
    ({"package": "peft", "first_failing": "0.12.0", "first_passing": "0.11.1", "date": "2026-11-23",
      "command": "python -m harness bisect c"}, "either last_passing"),
    ({"package": "peft", "first_failing": "0.13.0", "last_passing": "0.12.0", "date": "2026-11-23",
      "command": "python -m harness bisect c"}, "does not match the bisected edge"),
    ({"package": "peft", "first_failing": "0.12.0", "last_passing": "0.11.1", "date": "2026-11-23",
      "command": "python -m harness bisect c"}, None),
    ({"package": "peft", "first_failing": "0.11.1", "last_passing": "0.12.0", "date": "2026-11-23",
      "command": "python -m harness bisect c"}, "must be older"),
    ({"package": "transformers", "first_failing": "4.41.0", "last_passing": "4.40.2", "date": "2026-11-23",
      "command": "python -m harness bisect c"}, "no specifier"),
    ({"package": "peft", "first_failing": "0.12.0", "last_passing": "0.11.1", "date": "23.11.2026",
      "command": "python -m harness bisect c"}, "YYYY-MM-DD"),
    ({"package": "peft", "first_failing": "0.12.0", "last_passing": "0.11.1", "date": "2026-11-23",
      "command": "guessed"}, "command must be"),
    ({"package": "peft", "first_failing": "0.12.0", "last_passing": "0.11.1", "date": "2026-11-23",
      "command": "python -m harness bisect c", "probs": 3}, "unknown field 'probs'"),
    ({"package": "peft", "first_failing": "x.y", "last_passing": "0.11.1", "date": "2026-11-23",
      "command": "python -m harness bisect c"}, "not a version"),
])
def test_bisected_edges_are_checked_against_the_specifier(edge, words):
    entry = {"cases": ["c"], "stage": "save", "reference": "r", "versions": {"peft": ">=0.12"}, "bisected": [edge]}
    if words is None:
        (issue,) = parse_known_issues({"issue": [entry]})
        assert issue.bisected[0].failing == "0.12.0" and issue.bisected[0].kind == "starts"
    else:
        with pytest.raises(KnownIssuesError, match=words):
            parse_known_issues({"issue": [entry]})


_CROSS_EDGE = {"package": "peft", "last_failing": "0.12.0", "first_passing": "0.13.0", "date": "2026-11-23",
               "command": "python -m harness bisect c --package peft --read-from artifacts/w"}


@pytest.mark.parametrize("side, words", [
    ("reader", None),             # the reader's range ends where a reader first reads it
    ("writer", "outside writer.peft"),  # the writer's specifier is ==0.21.2: 0.12.0 is not in it
    (None, "needs side"),
])
def test_a_cross_version_edge_names_the_side_it_pins(side, words):
    edge = dict(_CROSS_EDGE, **({"side": side} if side else {}))
    entry = {"cases": ["c"], "stage": "load", "reference": "r", "writer": {"peft": "==0.21.2"},
             "reader": {"peft": "<0.13"}, "bisected": [edge]}
    if words is None:
        (issue,) = parse_known_issues({"issue": [entry]})
        assert issue.bisected[0].side == "reader" and issue.bisected[0].passing == "0.13.0"
    else:
        with pytest.raises(KnownIssuesError, match=words):
            parse_known_issues({"issue": [entry]})


def test_side_belongs_to_cross_version_entries_only():
    entry = {"cases": ["c"], "stage": "save", "reference": "r", "versions": {"peft": ">=0.12"},
             "bisected": [{"package": "peft", "first_failing": "0.12.0", "last_passing": "0.11.1",
                           "date": "2026-11-23", "command": "python -m harness bisect c", "side": "reader"}]}
    with pytest.raises(KnownIssuesError, match="cross-version entries"):
        parse_known_issues({"issue": [entry]})


def test_a_fix_edge_and_an_unknown_signature():
    entry = {"cases": ["c"], "stage": "save", "reference": "r", "versions": {"peft": "<0.14"},
             "bisected": [{"package": "peft", "last_failing": "0.13.2", "first_passing": "0.14.0",
                           "date": "2026-11-23", "command": "python -m harness bisect c --package peft"}]}
    (issue,) = parse_known_issues({"issue": [entry]})
    assert (issue.bisected[0].kind, issue.bisected[0].failing, issue.bisected[0].passing) == ("ends", "0.13.2", "0.14.0")
    with pytest.raises(KnownIssuesError, match="signature 'dtype' is not one of dtype-mismatch"):
        parse_known_issues({"issue": [{"cases": ["c"], "stage": "save", "reference": "r", "signature": "dtype"}]})


# --- relations (`when`) and failures carried from the writer ----------------------------------------------------

def cross_record(status="error", stage="load", msg="LoraConfig.__init__() got an unexpected keyword argument 'x'",
                 exc="builtins.TypeError", dropped=("x",), writer_verdict=None, reader_peft="0.9.0"):
    out = record(status=status, stage=stage, exc=exc, msg=msg,
                 versions={"peft": reader_peft, "transformers": "4.38.2", "torch": "2.13.0+cpu"})
    out["writer"] = {"peft": "0.21.2", "transformers": "5.23.0",
                     "verdict": writer_verdict or {"status": "pass", "stage": None}}
    out["dropped_config_fields"] = list(dropped) if dropped is not None else None
    return out


def unknown_fields_entry(**extra):
    entry = dict(stage="load", writer={}, reader={"peft": "<0.14"}, when=["config-fields-unknown-to-reader"],
                 signature="unknown-config-field")
    return issues(**{**entry, **extra})


def test_a_relation_limits_a_cross_entry_to_the_reads_where_it_holds():
    table = unknown_fields_entry()
    rejected = classify(cross_record(), table)
    assert rejected["status"] == "expected-failure" and rejected["known_issue"]["when"] == [
        "config-fields-unknown-to-reader"]
    # the same reader on a config it knows: the relation does not hold, so its pass is no "fix" ...
    assert classify(cross_record(status="pass", stage=None, msg=None, exc=None, dropped=()), table)["status"] == "pass"
    # ... and another failure there is not explained by the entry
    assert classify(cross_record(dropped=()), table)["status"] == "error"
    # an old reader that reads a config with unknown fields after all: the entry no longer fails, loudly
    fixed = classify(cross_record(status="pass", stage=None, msg=None, exc=None), table)
    assert fixed["status"] == "fixed" and "when config-fields-unknown-to-reader" in fixed["message"]
    # a reader from 0.14 on is outside the entry
    assert classify(cross_record(reader_peft="0.14.0"), table)["status"] == "error"


def test_a_relation_is_checked_when_the_table_is_read():
    with pytest.raises(KnownIssuesError, match="when must be a list of: .*config-fields-unknown-to-reader"):
        unknown_fields_entry(when=["writer-is-newer"])
    with pytest.raises(KnownIssuesError, match="when is for cross-version entries"):
        issues(when=["config-fields-unknown-to-reader"])


def carried_table():
    return issues(cases=["c-*"], stage="compare", signature="logits-mismatch", versions={"peft": ">=0.20"})


LOST = "the reloaded model does not reproduce the logits: max abs diff 0.3 > tolerance 1e-05 (cpu, fp32)"


def test_a_read_that_fails_where_its_writer_failed_carries_the_writers_known_issue():
    writer_failed = {"status": "expected-failure", "observed_status": "fail", "stage": "compare"}
    out = classify(cross_record(status="fail", stage="compare", exc="CheckFailed", msg=LOST,
                                writer_verdict=writer_failed), carried_table())
    assert out["status"] == "expected-failure" and out["known_issue"]["carried_from"] == "writer"
    # the writer's own round trip reproduced its logits: the read's loss is the reader's, not carried
    out = classify(cross_record(status="fail", stage="compare", exc="CheckFailed", msg=LOST), carried_table())
    assert out["status"] == "fail"
    # a read of such an artifact that passes is no "fix": the writer's release still has its bug
    out = classify(cross_record(status="pass", stage=None, exc=None, msg=None, writer_verdict=writer_failed),
                   carried_table())
    assert out["status"] == "pass"
    # a failure at another stage is not the writer's compare failure
    out = classify(cross_record(status="error", stage="load", writer_verdict=writer_failed), carried_table())
    assert out["status"] == "error"


def test_an_across_entry_covers_reads_over_its_release_both_ways_and_checks_its_edges():
    table = issues(stage="compare", across={"peft": ["0.16.0", "0.18.0"]}, signature="logits-mismatch")
    lost = dict(status="fail", stage="compare", exc="CheckFailed", msg=LOST)

    def read(writer, reader, **kw):
        out = cross_record(reader_peft=reader, **kw)
        out["writer"]["peft"] = writer
        return out

    for writer, reader in (("0.15.2", "0.16.0"), ("0.17.1", "0.15.2"), ("0.15.2", "0.21.2"), ("0.18.1", "0.17.1")):
        assert classify(read(writer, reader, **lost), table)["status"] == "expected-failure", (writer, reader)
    # two releases on the same side of every listed release: not covered, so a pass is a pass
    assert classify(read("0.16.0", "0.17.1", **lost), table)["status"] == "fail"
    assert classify(read("0.18.1", "0.21.2", status="pass", stage=None, exc=None, msg=None), table)["status"] == "pass"
    assert classify(read("0.15.2", "0.18.1", status="pass", stage=None, exc=None, msg=None), table)["status"] == "fixed"
    edge = {"package": "peft", "side": "reader", "last_passing": "0.15.2", "first_failing": "0.16.0",
            "date": "2026-11-24", "command": "python -m harness bisect c"}
    issues(stage="compare", across={"peft": ["0.16.0"]}, bisected=[edge])
    with pytest.raises(KnownIssuesError, match="straddles none of across.peft"):
        issues(stage="compare", across={"peft": ["0.18.0"]}, bisected=[edge])
    with pytest.raises(KnownIssuesError, match="across.peft: a list of releases"):
        issues(stage="compare", across={"peft": "0.16.0"})
