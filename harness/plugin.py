"""pytest plugin: every case file under --cases is collected as its cells (case x device x dtype).

Item names read `<case id>[<device>-<dtype>]`, so `-k "vit_512 and cpu"` works; tags become markers, CUDA
cells carry the `cuda` marker. Each item runs harness.run_cell and attaches its record to the test report,
so the controller of a pytest-xdist run sees every record; the controller writes --compat-report.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from .case import CaseError, load_cases
from .environment import versions_line
from .families import BaseCheckpoints
from .known_issues import KnownIssuesError, load_known_issues
from .report import BAD_STATUSES, write_report
from .roundtrip import cell_id, run_cell

RECORD_KEY = "peft_compat_cell"


def pytest_addoption(parser):
    group = parser.getgroup("peft-compat")
    group.addoption("--cases", action="append", default=None, metavar="DIR",
                    help="case folder(s) to collect (default: ./cases under the rootdir)")
    group.addoption("--compat-report", default=None, metavar="PATH",
                    help="write the JSON compatibility report of the collected cells to PATH")
    group.addoption("--known-issues", default=None, metavar="PATH",
                    help="known-issues table (default: the one shipped in harness/known_issues.toml)")


class CompatState:
    """Session state: the validated cases, known issues, base checkpoints and the records seen so far."""

    def __init__(self, config):
        self.config = config
        dirs = config.getoption("--cases") or [str(Path(config.rootpath) / "cases")]
        self.case_dirs = [Path(d).resolve() for d in dirs if os.path.isdir(d) or d in (config.getoption("--cases") or [])]
        try:
            self.cases = load_cases(*self.case_dirs)
            self.known = load_known_issues(config.getoption("--known-issues"))
        except (CaseError, KnownIssuesError) as exc:
            raise pytest.UsageError(f"peft-compat: {exc}") from None
        self.by_path = {}
        for case in self.cases:
            self.by_path.setdefault(Path(case.path).resolve(), []).append(case)
        self.bases = BaseCheckpoints()
        self.records: dict[str, dict] = {}

    # hooks: this object is registered as a plugin in pytest_configure

    def pytest_runtest_logreport(self, report):
        """On the controller (and in a plain run): keep the record each cell attached to its report."""
        for key, value in getattr(report, "user_properties", ()):
            if key == RECORD_KEY:
                record = json.loads(value)
                self.records[record["cell_id"]] = record

    def pytest_sessionfinish(self, session, exitstatus):
        if self.bases._root:
            shutil.rmtree(self.bases.root, ignore_errors=True)
        if hasattr(self.config, "workerinput"):  # an xdist worker: the controller writes the report
            return
        path = self.config.getoption("--compat-report")
        if path:
            interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
            write_report(path, list(self.records.values()), complete=not interrupted,
                         incomplete_reason="interrupted" if interrupted else None)

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if not self.records:
            return
        counts = Counter(r["status"] for r in self.records.values())
        terminalreporter.section("peft-compat")
        terminalreporter.write_line(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for record in sorted(self.records.values(), key=lambda r: r["cell_id"]):
            if record["status"] == "fixed":
                terminalreporter.write_line(f"FIXED (known issue no longer fails): {record['cell_id']}: "
                                            f"{record['known_issue']['reference']}", red=True, bold=True)
        path = config.getoption("--compat-report")
        if path:
            terminalreporter.write_line(f"report: {path} ({len(self.records)} cells; red statuses: "
                                        f"{sum(counts[s] for s in BAD_STATUSES)})")


STATE = pytest.StashKey[CompatState]()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: a cell that runs (part of) its round trip on a CUDA device")
    config.addinivalue_line("markers", "cases: a compatibility cell collected from a case file")
    state = CompatState(config)
    for tag in sorted({t for c in state.cases for t in c.tags}):
        config.addinivalue_line("markers", f"{tag}: case tag (from case files)")
    config.stash[STATE] = state
    config.pluginmanager.register(state, "peft-compat-state")


def pytest_collect_file(file_path, parent):
    state = parent.config.stash[STATE]
    if file_path.suffix == ".toml" and file_path.resolve() in state.by_path:
        return CaseFile.from_parent(parent, path=file_path)
    return None


class CaseFile(pytest.File):
    def collect(self):
        state = self.config.stash[STATE]
        for case in state.by_path[self.path.resolve()]:
            for device in case.devices:
                for dtype in case.dtypes:
                    item = CellItem.from_parent(self, name=cell_id(case.id, device, dtype), case=case,
                                                device=device, dtype=dtype)
                    item.add_marker("cases")
                    for tag in case.tags:
                        item.add_marker(tag)
                    if device != "cpu":
                        item.add_marker("cuda")
                    yield item


class CellFailure(Exception):
    def __init__(self, record):
        super().__init__(record["cell_id"])
        self.record = record


def format_failure(record: dict) -> str:
    status = record["status"]
    head = f"{record['cell_id']}: {status.upper()}"
    if record.get("stage"):
        head += f" at stage '{record['stage']}'"
    lines = [head]
    if record.get("exception_type") and record["exception_type"] != "CheckFailed":
        lines.append(f"  {record['exception_type']}: {(record.get('message') or '').strip()[:1500]}")
    else:
        lines.append(f"  {(record.get('message') or '').strip()[:1500]}")
    lines.append(f"  case file: {record.get('case_file')}")
    lines.append(f"  versions: {versions_line(record['environment'])}; device {record['environment']['device_name']}")
    if record.get("max_abs_diff") is not None or record.get("adapter_effect") is not None:
        lines.append(f"  adapter effect {record.get('adapter_effect')}, max abs diff {record.get('max_abs_diff')}, "
                     f"tolerance {record['tolerance']}")
    for item in record.get("known_issue_mismatch") or []:
        lines.append(f"  known issue does not match this failure: {item}")
    if record.get("traceback"):
        lines.append("  traceback (last frames):")
        lines += ["    " + line for line in record["traceback"].rstrip().splitlines()[-12:]]
    return "\n".join(lines)


class CellItem(pytest.Item):
    def __init__(self, *, case, device, dtype, **kwargs):
        super().__init__(**kwargs)
        self.case, self.device, self.dtype = case, device, dtype

    def runtest(self):
        state = self.config.stash[STATE]
        record = run_cell(self.case, self.device, self.dtype, bases=state.bases, known_issues=state.known)
        self.user_properties.append((RECORD_KEY, json.dumps(record)))
        status = record["status"]
        if status in ("skipped", "not-applicable"):
            pytest.skip(f"{status}: {record['message']}")
        if status == "expected-failure":
            known = record["known_issue"]
            pytest.xfail(f"{known['reference']} ({record['stage']}: {record['exception_type']})")
        if status != "pass":
            raise CellFailure(record)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CellFailure):
            return format_failure(excinfo.value.record)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, self.name
