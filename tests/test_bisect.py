"""The bisect search over a fake release list with a fake probe (fast), its command-line pieces, the release
listing and pairing rule, and one opt-in real bisection (PEFT_COMPAT_SLOW=1: builds environments with uv)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness.running import bisect as bs
from harness.running import releases as rel
from harness.running.probe_envs import Untestable, describe, outcome_key

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ["0.7.1", "0.8.0", "0.8.1", "0.8.2", "0.9.0", "0.10.0", "0.11.0", "0.11.1", "0.12.0", "0.13.0",
            "0.13.1", "0.13.2", "0.14.0", "0.15.0"]
PASS, FAIL = ("pass", None, None), ("error", "save", "shared-tensors")


class FakeProbe:
    """outcome(version) over the fake release list; `untestable` versions raise; `flakes` {version: [outcomes]}
    are returned first, one per call, before the true outcome."""

    def __init__(self, first_bad, *, untestable=(), flakes=None, fixed=False):
        self.first_bad, self.untestable, self.flakes = first_bad, set(untestable), dict(flakes or {})
        self.fixed = fixed
        self.calls = []

    def __call__(self, version):
        self.calls.append(version)
        if version in self.untestable:
            raise Untestable(f"{version} does not install (fake)")
        if self.flakes.get(version):
            return self.flakes[version].pop(0)
        after = VERSIONS.index(version) >= VERSIONS.index(self.first_bad)
        return (PASS if after else FAIL) if self.fixed else (FAIL if after else PASS)


@pytest.mark.parametrize("first_bad", VERSIONS[1:])
def test_a_monotone_change_is_found_at_every_position(first_bad):
    probe = FakeProbe(first_bad)
    found = bs.search(VERSIONS, probe, reruns=3)
    assert found["state"] == "found"
    assert (found["before"], found["after"]) == (VERSIONS[VERSIONS.index(first_bad) - 1], first_bad)
    assert found["before_outcome"] == PASS and found["after_outcome"] == FAIL
    assert not found["flaky"] and not found["untested_between"]
    distinct = set(probe.calls)
    assert len(distinct) <= 2 + 4  # the two ends + log2(12 inner candidates) rounded up
    assert probe.calls.count(found["before"]) == 3 and probe.calls.count(found["after"]) == 3  # reruns


def test_a_fix_is_found_the_same_way():
    found = bs.search(VERSIONS, FakeProbe("0.14.0", fixed=True))
    assert (found["before"], found["after"], found["before_outcome"], found["after_outcome"]) == \
        ("0.13.2", "0.14.0", FAIL, PASS)
    assert bs._label(found["before_outcome"], found["after_outcome"]) == ("first passing", "last failing")


def test_a_candidate_that_cannot_be_installed_is_skipped_and_reported_not_guessed():
    probe = FakeProbe("0.12.0", untestable={"0.11.1", "0.9.0"})
    found = bs.search(VERSIONS, probe)
    # 0.11.1 could not be probed: the edge lies between 0.11.0 (passes) and 0.12.0 (fails); which of the two
    # sides 0.11.1 belongs to is unknown, and the answer says so instead of guessing
    assert (found["before"], found["after"]) == ("0.11.0", "0.12.0")
    assert found["untested_between"] == ["0.11.1"]
    assert set(found["untestable"]) <= {"0.11.1", "0.9.0"} and "0.11.1" in found["untestable"]
    assert "0.11.1" not in found["runs"]


def test_an_untestable_end_moves_the_window_inward():
    found = bs.search(VERSIONS, FakeProbe("0.12.0", untestable={"0.7.1", "0.15.0"}))
    assert found["state"] == "found" and (found["before"], found["after"]) == ("0.11.1", "0.12.0")
    assert set(found["untestable"]) == {"0.7.1", "0.15.0"}


def test_a_flaky_probe_is_screened_out_by_the_reruns():
    # 0.11.1 truly passes, but its first probe flakes to FAIL: a single-run search would place the edge at
    # 0.11.0 | 0.11.1. The reruns of that side outvote the flake and the search goes round again.
    probe = FakeProbe("0.12.0", flakes={"0.11.1": [FAIL]})
    found = bs.search(VERSIONS, probe, reruns=3)
    assert found["state"] == "found" and (found["before"], found["after"]) == ("0.11.1", "0.12.0")
    assert found["flaky"] == {"0.11.1": {FAIL: 1, PASS: 2}}
    assert found["rounds"] >= 2


def test_a_flaky_failure_on_the_failing_side_is_outvoted_too():
    probe = FakeProbe("0.12.0", flakes={"0.13.0": [PASS], "0.12.0": [PASS]})
    found = bs.search(VERSIONS, probe, reruns=3)
    assert (found["before"], found["after"]) == ("0.11.1", "0.12.0")
    assert "0.12.0" in found["flaky"]


def test_no_change_between_the_ends_is_said_after_rerunning_them():
    probe = FakeProbe("0.7.1")  # fails everywhere
    found = bs.search(VERSIONS, probe, reruns=3)
    assert found["state"] == "no-change"
    assert probe.calls.count("0.7.1") == 3 and probe.calls.count("0.15.0") == 3


def test_nothing_testable():
    found = bs.search(["1", "2"], FakeProbe("0.8.0", untestable={"1", "2"}))
    assert found["state"] == "untestable"


def test_a_middle_outcome_stops_the_search_at_the_first_change():
    """adapt error -> compare fail -> load error (the ViT posemb_module case): the first change is found."""
    outcomes = {v: ("error", "adapt", "AttributeError") for v in VERSIONS[:5]}
    outcomes.update({v: ("fail", "compare", "logits-mismatch") for v in VERSIONS[5:9]})
    outcomes.update({v: ("error", "load", "state-dict-key-error") for v in VERSIONS[9:]})
    found = bs.search(VERSIONS, outcomes.__getitem__)
    assert (found["before"], found["after"]) == ("0.9.0", "0.10.0")
    assert bs._label(found["before_outcome"], found["after_outcome"]) == ("first changed", "last as before")


def test_outcome_keys_and_descriptions():
    outcome = {"status": "error", "stage": "save", "signature": "shared-tensors", "normalized_message": "x #"}
    assert outcome_key(outcome, "status") == ("error",)
    assert outcome_key(outcome, "stage") == ("error", "save")
    assert outcome_key(outcome) == ("error", "save", "shared-tensors")
    assert outcome_key(outcome, "message")[-1] == "x #"
    assert describe(outcome) == "error at save (shared-tensors)" and describe(("pass", None, None)) == "pass"


def _release(text, day):
    return rel.Release(rel.Version(text), text, datetime(2024, 1, day, tzinfo=timezone.utc))


def test_release_listing_leaves_out_prereleases_yanked_and_wrong_python():
    data = {"releases": {
        "1.0.0": [{"upload_time_iso_8601": "2024-01-02T00:00:00Z", "yanked": False}],
        "1.1.0rc1": [{"upload_time_iso_8601": "2024-01-03T00:00:00Z", "yanked": False}],
        "1.1.0": [{"upload_time_iso_8601": "2024-01-04T00:00:00Z", "yanked": True}],
        "1.2.0": [{"upload_time_iso_8601": "2024-01-05T00:00:00Z", "yanked": False, "requires_python": ">=3.12"}],
        "1.0.1": [{"upload_time": "2024-01-03T10:00:00", "yanked": False}],
        "0.9": [],
    }}
    assert [r.text for r in rel.releases_from_json(data, "3.11.7")] == ["1.0.0", "1.0.1"]
    assert [r.text for r in rel.releases_from_json(data, "3.12.1")] == ["1.0.0", "1.0.1", "1.2.0"]


def test_contemporary_is_the_newest_other_release_uploaded_before_the_candidate():
    others = [_release("4.36.0", 1), _release("4.36.2", 5), _release("4.37.0", 9)]
    assert rel.contemporary(_release("0.7.1", 6), others).text == "4.36.2"
    assert rel.contemporary(_release("0.7.1", 5), others).text == "4.36.2"  # same moment counts
    assert rel.contemporary(_release("0.6.0", 1), others).text == "4.36.0"
    assert rel.contemporary(rel.Release(rel.Version("0.1"), "0.1", datetime(2023, 1, 1, tzinfo=timezone.utc)),
                            others) is None


def test_hold_parsing():
    assert bs.parse_hold(None, "peft") == ("transformers", None)
    assert bs.parse_hold("transformers==4.45.2", "peft") == ("transformers", "4.45.2")
    assert bs.parse_hold("contemporary", "transformers") == ("peft", None)
    with pytest.raises(ValueError, match="only the other package"):
        bs.parse_hold("peft==0.14.0", "peft")
    with pytest.raises(ValueError, match="PACKAGE==VERSION"):
        bs.parse_hold("transformers>=4", "peft")


def test_matrix_floor_comes_from_tox_ini():
    assert bs.matrix_floor(ROOT) == {"peft": "0.7.1", "transformers": "4.36.2"}


def test_summary_line_and_known_issues_snippet():
    answer = {"state": "found", "package": "peft", "after": "0.12.0", "before": "0.11.1",
              "after_outcome": "error at save (NotImplementedError)", "before_outcome": "pass",
              "labels": {"after": "first failing", "before": "last passing"}, "untested_between": [],
              "probes": 5, "probes_from_cache": 2, "seconds": 70.2, "hold": {"transformers": "contemporary"},
              "date": "2026-11-23", "command": "python -m harness bisect 'c[cpu-fp32]' --package peft",
              "cell": "c[cpu-fp32]"}
    line = bs.summary_line(answer)
    assert line.startswith("first failing: peft 0.12.0") and "last passing: 0.11.1" in line
    assert "5 probes (2 from cache), 70 s" in line
    snippet = bs.toml_snippet(answer)
    assert 'first_failing = "0.12.0"' in snippet and 'last_passing = "0.11.1"' in snippet
    # the snippet is what known_issues.toml accepts
    import tomllib

    from harness.specs.known_issues import parse_known_issues

    edge = tomllib.loads(snippet)["bisected"]
    parse_known_issues({"issue": [{"cases": ["c"], "stage": "save", "reference": "r",
                                   "versions": {"peft": ">=0.12"}, "bisected": edge}]})


def test_bisect_rejects_an_unknown_cell_before_building_anything(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "bisect", "bert_classifier-lora-bias_all-add_adapter",
                           "--package", "peft", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2 and "no cell" in proc.stderr and "[cpu-fp32]" in proc.stderr
    assert not (tmp_path / "envs").exists()


@pytest.mark.skipif(os.environ.get("PEFT_COMPAT_SLOW") != "1",
                    reason="slow (builds 2+ environments with uv, several minutes): PEFT_COMPAT_SLOW=1")
def test_real_bisection_of_the_load_adapter_fix(tmp_path):
    """S5 for real: peft 0.13.2 still reports base keys missing in load_adapter, 0.14.0 does not (PR #2084)."""
    out = tmp_path / "answer.json"
    cell = "bert_classifier-lora-resized_vocab-load_adapter[cpu-fp32]"
    proc = subprocess.run([sys.executable, "-m", "harness", "bisect", cell, "--package", "peft", "--good", "0.13.0",
                           "--bad", "0.14.0", "--hold", "transformers==4.45.2", "--reruns", "2", "--out", str(out),
                           "--cache-dir", str(tmp_path / "cache")],  # real probes: nothing from an earlier run
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"), timeout=3000)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer = json.loads(out.read_text())
    assert (answer["last_failing"], answer["first_passing"]) == ("0.13.2", "0.14.0"), proc.stdout
    assert answer["before_outcome"] == "fail at load (non-adapter-keys-missing)" and answer["after_outcome"] == "pass"
    assert "last failing: 0.13.2" in proc.stdout
    assert answer["probes"] >= 4 and answer["probes_from_cache"] == 0 and not answer["untestable"]


def test_a_group_of_cells_shares_each_probe_process_and_the_cache_answers_reruns(tmp_path, monkeypatch):
    """bisect CELL CELL: a cache miss runs every cell of the group in one harness process; the other cells'
    searches then read their runs from the cache, and a second bisection of the same cells runs nothing."""
    from harness.running import probe_envs

    class Builder:
        root, cache, log = ROOT, str(tmp_path), staticmethod(lambda m: None)

        def ensure(self, pins):
            if pins["peft"] == "0.11.1":
                raise Untestable("does not install (fake)")
            return "/fake/python"

    cells = {"a[cpu-fp32]": str(ROOT / "cases" / "methods-lora.toml"),
             "b[cpu-bf16]": str(ROOT / "cases" / "methods-loha.toml")}
    processes = []

    def fake_run(self, python, pins):
        processes.append(pins["peft"])
        bad = rel.Version(pins["peft"]) >= rel.Version("0.12.0")
        out = {}
        for cell in self.cells:
            status = "error" if bad and cell.startswith("a") else "pass"
            out[cell] = {"outcome": {"status": status, "stage": "save" if status == "error" else None,
                                     "signature": None, "exception_type": None, "normalized_message": None,
                                     "message": None}, "seconds": 1.0, "environment": {}, "date": "2026-11-23"}
        return out

    monkeypatch.setattr(probe_envs.Prober, "_run", fake_run)
    versions = ["0.10.0", "0.11.0", "0.11.1", "0.12.0", "0.13.0"]

    def bisect_all():
        prober = probe_envs.Prober(cells, Builder())
        found = {cell: bs.search(versions, lambda v, c=cell: outcome_key(prober({"peft": v, "transformers": "4.41.2"},
                                                                                c)), reruns=3)
                 for cell in cells}
        return prober, found

    prober, found = bisect_all()
    assert (found["a[cpu-fp32]"]["before"], found["a[cpu-fp32]"]["after"]) == ("0.11.0", "0.12.0")
    assert found["a[cpu-fp32]"]["untested_between"] == ["0.11.1"] and "0.11.1" in found["a[cpu-fp32]"]["untestable"]
    assert found["b[cpu-bf16]"]["state"] == "no-change"
    ran_first = len(processes)
    # b's search read the ends from a's processes; its own reruns of the ends ran a too (one process each)
    assert prober.from_cache["b[cpu-bf16]"] >= 2
    assert ran_first == prober.processes == prober.ran["a[cpu-fp32]"] + prober.ran["b[cpu-bf16]"]
    prober, again = bisect_all()
    assert len(processes) == ran_first and prober.processes == 0  # all from the cache
    assert again["a[cpu-fp32]"]["after"] == "0.12.0"
    cache = json.loads((tmp_path / "probes.json").read_text())["probes"]
    assert any(k.startswith("a[cpu-fp32]|transformers-4.41.2_peft-0.12.0|") and len(v) == 3 for k, v in cache.items())


def test_cross_version_probes_write_then_read_with_the_real_libraries(tmp_path):
    """bisect --read-by / --read-from: a probe is a real write in one interpreter and a real read in another
    (here both are this one), and its outcome is the read's record; a writer folder without cells/ is one clear
    error, and the probe cache keys the two sides apart."""
    import sys

    from harness.running import probe_envs

    class Builder:
        root, cache, log = ROOT, str(tmp_path), staticmethod(lambda m: None)

        def ensure(self, pins):
            return sys.executable

    cell = "bert_classifier-lora[cpu-fp32]"
    cells = {cell: str(ROOT / "cases" / "methods-lora.toml")}
    pins = {"peft": "0.21.2", "transformers": "5.23.0"}
    writer_side = probe_envs.CrossProbe(reader_pins=pins)
    prober = probe_envs.Prober(cells, Builder(), use_cache=False, cross=writer_side)
    run = prober._run(sys.executable, pins)[cell]
    assert run["outcome"]["status"] == "pass", run

    # the reader side reads an artifact the harness wrote, and sees it change when it is tampered with
    artifacts = tmp_path / "artifacts"
    import subprocess
    subprocess.run([sys.executable, "-m", "harness", "run", "-q", "-k", cell, "--artifacts", str(artifacts),
                    "--out", str(tmp_path / "w.json")], cwd=ROOT, check=False, capture_output=True,
                   env={**probe_envs._probe_env(ROOT), "TOX_ENV_NAME": "w1"})
    reader_side = probe_envs.CrossProbe.reading(str(artifacts / "w1"))
    assert reader_side.writer == "w1" and reader_side.key(cell).startswith("read-from:w1:")
    assert writer_side.key(cell) != reader_side.key(cell)
    prober = probe_envs.Prober(cells, Builder(), use_cache=False, cross=reader_side)
    assert prober._run(sys.executable, pins)[cell]["outcome"]["status"] == "pass"
    with pytest.raises(ValueError, match="not a writer's artifacts folder"):
        probe_envs.CrossProbe.reading(str(artifacts))


def test_read_by_names_both_releases():
    assert bs.parse_read_by("peft==0.7.1, transformers==4.36.2") == {"peft": "0.7.1", "transformers": "4.36.2"}
    for bad in ("peft==0.7.1", "peft>=0.7,transformers==4.36.2", "torch==2.13.0,peft==0.7.1"):
        with pytest.raises(ValueError, match="--read-by"):
            bs.parse_read_by(bad)
