"""pytest plugin: every case file under --cases is collected as its cells (case x device x dtype).

Item names read `<case id>[<device>-<dtype>]`, so `-k "vit_512 and cpu"` works; tags become markers, CUDA
cells carry the `cuda` marker. Each item runs harness.run_cell and attaches its record to the test report,
so the controller of a pytest-xdist run sees every record; the controller writes --compat-report.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from harness.roundtrip.cell import cell_id, new_record
from harness.roundtrip.check import load_cases
from harness.roundtrip.environment import versions_line
from harness.roundtrip.families import BaseCheckpoints
from harness.running import summary
from harness.reporting.report import ReportError
from harness.running.checkpoints import ReportCheckpoints, ReportLock, StopSignals, Terminated, admit
from harness.running.cli import UsageError, check_timeout_option
from harness.running.outputs import OutputError, check_output_file, check_output_folder
from harness.specs import statuses
from harness.running.isolation import DEFAULT_TIMEOUT_S, ISOLATION_CHOICES, ISOLATION_HELP, CellRunner, isolate_value
from harness.specs.case import CaseError
from harness.specs.known_issues import KnownIssuesError, load_known_issues

RECORD_KEY = "peft_compat_cell"


def pytest_addoption(parser):
    group = parser.getgroup("peft-compat")
    group.addoption("--cases", action="append", default=None, metavar="DIR",
                    help="case folder(s) to collect (default: ./cases under the rootdir)")
    group.addoption("--compat-report", default=None, metavar="PATH",
                    help="write the JSON compatibility report of the collected cells to PATH")
    group.addoption("--known-issues", default=None, metavar="PATH",
                    help="known-issues table (default: the one shipped in harness/specs/known_issues.toml)")
    group.addoption("--isolation", choices=ISOLATION_CHOICES, default="worker", help=ISOLATION_HELP)
    group.addoption("--cell-timeout", type=float, default=None, metavar="SECONDS",
                    help=f"time limit per cell unless the case sets timeout_s (default: {DEFAULT_TIMEOUT_S:g}; "
                         "needs isolation)")
    group.addoption("--full", action="store_true",
                    help="also collect the full-set cells (the dtypes each case lists in full_dtypes; marker 'full')")
    group.addoption("--keep-failed", default=None, metavar="DIR",
                    help="keep the checkpoint of every failing cell in DIR, with record.json and a standalone repro.py")


class CompatState:
    """Session state: the validated cases, known issues, base checkpoints and the records seen so far."""

    def __init__(self, config):
        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        dirs = config.getoption("--cases") or [str(Path(config.rootpath) / "cases")]
        self.case_dirs = [Path(d).resolve() for d in dirs if os.path.isdir(d) or d in (config.getoption("--cases") or [])]
        try:  # the cheap checks first: validating the cases imports peft
            check_timeout_option(config.getoption("--cell-timeout"), "--cell-timeout")
            if not self.is_worker:  # where the run writes, checked before the first cell (the controller's job)
                if config.getoption("--compat-report"):
                    check_output_file(config.getoption("--compat-report"), "--compat-report")
                if config.getoption("--keep-failed"):
                    check_output_folder(config.getoption("--keep-failed"), "--keep-failed")
            self.known = load_known_issues(config.getoption("--known-issues"))
            self.cases = load_cases(*self.case_dirs)
        except (CaseError, KnownIssuesError, UsageError, OutputError) as exc:
            raise pytest.UsageError(f"peft-compat: {exc}") from None
        self.write_error: str | None = None
        self.by_path = {}
        for case in self.cases:
            self.by_path.setdefault(Path(case.path).resolve(), []).append(case)
        # xdist: the controller gives each worker a folder of its own for stage files, base checkpoints and cell
        # folders, and removes it at the end: even a worker that died leaves nothing behind.
        self.session_dir = config.workerinput.get("peft_compat_session_dir") if self.is_worker else None
        tmp_root = os.path.join(self.session_dir, config.workerinput["workerid"]) if self.session_dir else None
        if tmp_root:
            os.makedirs(tmp_root, exist_ok=True)
        self.bases = BaseCheckpoints(tempfile.mkdtemp(prefix="peft-compat-bases-", dir=tmp_root) if tmp_root else None)
        isolation = isolate_value(config.getoption("--isolation"))
        if config.getoption("--cell-timeout") is not None and not isolation:
            raise pytest.UsageError("peft-compat: --cell-timeout needs isolation (a cell in the test process "
                                    "cannot be stopped): drop --isolation off or --cell-timeout")
        self.runner = CellRunner(isolate=isolation, timeout_s=config.getoption("--cell-timeout"),
                                 keep_failed=config.getoption("--keep-failed"), bases=self.bases,
                                 known_issues=self.known, tmp_root=tmp_root)
        self.cells = {cell_id(c.id, d, t): (c, d, t) for c in self.cases for d, t, _ in c.cells(full=True)}
        path = config.getoption("--compat-report")
        self.lock = None
        if path and not self.is_worker:  # one writer per report, as with `python -m harness run`
            try:
                self.lock = ReportLock(path).acquire()
            except ReportError as exc:
                raise pytest.UsageError(f"peft-compat: {exc}") from None
        self.checkpoints = ReportCheckpoints(path) if path and not self.is_worker else None
        self.records = self.checkpoints.records if self.checkpoints else {}
        self.signals: StopSignals | None = None
        # the cell ids pytest selected (after -k / -m / deselection), known once collection is done: from the
        # session's items in a plain run, from the workers' collections on an xdist controller
        self.selected: set[str] | None = None
        self.stop_reason: str | None = None  # what stopped the run early (an interrupt, xdist's maxfail)

    # hooks: this object is registered as a plugin in pytest_configure

    def _keep(self, record: dict) -> None:
        if self.checkpoints is not None and self.write_error is None:
            try:
                self.checkpoints.add(record)  # rewrites the report (atomically, throttled) while the run goes on
            except ReportError as exc:  # a full disk: keep running; the final write tries again, or says so
                self.write_error = str(exc)
        elif self.checkpoints is not None:
            self.checkpoints.records[record["cell_id"]] = admit(record)
        else:
            self.records[record["cell_id"]] = record

    def pytest_runtest_logreport(self, report):
        """On the controller (and in a plain run): keep the record each cell attached to its report."""
        found = False
        for key, value in getattr(report, "user_properties", ()):
            if key == RECORD_KEY:
                self._keep(json.loads(value))
                found = True
        if not found and report.when == "???" and report.failed:  # xdist: the worker died running this item
            record = self._crashed_worker_record(report)
            if record is not None:
                self._keep(record)

    def _crashed_worker_record(self, report):
        """xdist reports a worker that died (possible with --isolation off) without the item's record; each
        worker writes the stage it is in to <session folder>/<worker>.stage, so the record can say where."""
        name = report.nodeid.rsplit("::", 1)[-1]
        if name not in self.cells or name in self.records:
            return None
        case, device, dtype = self.cells[name]
        record = new_record(case, device, dtype)
        record["status"], record["exception_type"] = "crashed", "WorkerCrashed"
        node = getattr(report, "node", None)
        worker = getattr(getattr(node, "gateway", None), "id", None)
        stage = None
        if worker and self.session_dir:
            try:
                with open(os.path.join(self.session_dir, f"{worker}.stage"), encoding="utf-8") as fh:
                    seen = json.load(fh)
                if seen.get("cell_id") == name:
                    stage = seen.get("stage")
            except (OSError, ValueError):
                pass
        record["stage"] = stage
        where = f"during stage '{stage}'" if stage else "(stage unknown)"
        record["message"] = (f"the pytest-xdist worker {worker or '?'} died running this cell {where}: "
                             f"{str(report.longrepr)[:500]}")
        return record

    def on_stage(self, name: str):
        """A stage callback for cells run in the test process under xdist (--isolation off)."""
        worker = self.config.workerinput.get("workerid") if self.is_worker else None
        if not (worker and self.session_dir):
            return None
        path = os.path.join(self.session_dir, f"{worker}.stage")

        def write(stage):
            with open(path, "w", encoding="utf-8") as fh:
                json.dump({"cell_id": name, "stage": stage}, fh)
        return write

    def pytest_collection_finish(self, session):
        """A plain run (or an xdist worker): the cells selected for this session."""
        self.selected = {item.name for item in session.items if isinstance(item, CellItem)}

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        """xdist controller: every worker collects the same items; the cells among them are the selection."""
        names = {nodeid.rsplit("::", 1)[-1] for nodeid in ids}
        self.selected = (self.selected or set()) | (names & set(self.cells))

    def pytest_keyboard_interrupt(self, excinfo):
        """Ctrl-C, SIGTERM, or xdist stopping the run (its maxfail / a worker interrupted): say which."""
        exc = excinfo.value
        if isinstance(exc, Terminated):
            self.stop_reason = "terminated (SIGTERM)"
        elif type(exc) is KeyboardInterrupt:
            self.stop_reason = "interrupted (SIGINT)"
        else:  # xdist's Interrupted("stopping after 1 failures"), pytest.exit(...), ...
            self.stop_reason = str(getattr(exc, "msg", None) or exc) or type(exc).__name__

    def completeness(self, session, exitstatus) -> tuple[bool, str | None]:
        """(complete, incomplete_reason) of the report: complete only if every selected cell has a record.
        -x / --maxfail, an interrupt and a lost xdist worker all leave selected cells without one; the reason
        says what stopped the run and how many cells are not in. Without a known selection (collection never
        finished) only a run that was not stopped is complete."""
        stopped = self.stop_reason or session.shouldfail or session.shouldstop or (
            "interrupted" if exitstatus == pytest.ExitCode.INTERRUPTED else None)
        if self.selected is None:
            return (not stopped, f"{stopped}: the selected cells are not known" if stopped else None)
        missing = sorted(self.selected - set(self.records))
        if not missing:
            return True, None
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        lacking = f"{len(missing)} of {len(self.selected)} selected cells have no record ({shown})"
        if not stopped:
            stopped = "the run ended early (a pytest-xdist worker lost?)"
        return False, f"{stopped}: {lacking}"

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node):
        """xdist controller: give each worker the session folder (stage files, its temporary folders)."""
        if self.session_dir is None:
            self.session_dir = tempfile.mkdtemp(prefix="peft-compat-session-")
        node.workerinput["peft_compat_session_dir"] = self.session_dir

    def install_signals(self):
        """The controller (or a plain run) treats SIGTERM like Ctrl-C, and ignores any signal after the first
        while the session ends: the report is written, incomplete, whatever the signals that follow."""
        if not self.is_worker:
            self.signals = StopSignals().install()

    def pytest_unconfigure(self, config):
        if self.signals is not None:
            self.signals.uninstall()
            self.signals = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionfinish(self, session, exitstatus):
        """The final report is written before any other plugin's pytest_sessionfinish runs: pytest-xdist tears
        its workers down in its own (up to 10 s for a worker stuck in a cell), and a signal then, or a SIGKILL
        after it, must not cost the report. From here on signals are deferred (StopSignals). The cell worker,
        the base checkpoints and the session folder go after every other plugin's, when no worker runs."""
        if self.signals is not None:
            self.signals.defer()
        if self.checkpoints is not None:
            interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
            if self.records or interrupted:  # no cell selected (exit 5, -k / -m left none): a report there stays
                complete, reason = self.completeness(session, exitstatus)
                try:
                    self.checkpoints.write(complete=complete, reason=reason)
                    self.write_error = None
                except ReportError as exc:
                    self.write_error = str(exc)
                if self.write_error is not None and session.exitstatus in (pytest.ExitCode.OK,
                                                                            pytest.ExitCode.TESTS_FAILED):
                    session.exitstatus = pytest.ExitCode.INTERNAL_ERROR  # the cells ran, but their report is lost
        yield
        self.runner.close()  # stops the cell worker, removes the base checkpoints
        if self.session_dir and not self.is_worker:
            shutil.rmtree(self.session_dir, ignore_errors=True)

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        path = config.getoption("--compat-report")
        if self.write_error is not None:
            terminalreporter.write_line(f"peft-compat: error: {self.write_error}", red=True, bold=True)
        if not self.records:
            if path and not self.is_worker and exitstatus != pytest.ExitCode.INTERRUPTED:
                terminalreporter.write_line(f"peft-compat: no cell ran: --compat-report {path} is not written")
            return
        counts = summary.counts(self.records.values())
        terminalreporter.section("peft-compat")
        terminalreporter.write_line(summary.counts_line(counts))
        for line in summary.fixed_lines(self.records.values()):
            terminalreporter.write_line(line, red=True, bold=True)
        if path and self.write_error is None:
            terminalreporter.write_line(f"report: {path} ({len(self.records)} cells; red statuses: "
                                        f"{summary.red_count(counts)})")


STATE = pytest.StashKey[CompatState]()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: a cell that runs (part of) its round trip on a CUDA device")
    config.addinivalue_line("markers", "cases: a compatibility cell collected from a case file")
    config.addinivalue_line("markers", "full: a full-set cell (a dtype the case lists in full_dtypes); needs --full")
    state = CompatState(config)
    for tag in sorted({t for c in state.cases for t in c.tags}):
        config.addinivalue_line("markers", f"{tag}: case tag (from case files)")
    config.stash[STATE] = state
    config.pluginmanager.register(state, "peft-compat-state")
    state.install_signals()


def pytest_collect_file(file_path, parent):
    state = parent.config.stash[STATE]
    if file_path.suffix == ".toml" and file_path.resolve() in state.by_path:
        return CaseFile.from_parent(parent, path=file_path)
    return None


class CaseFile(pytest.File):
    def collect(self):
        state = self.config.stash[STATE]
        full = self.config.getoption("--full")
        for case in state.by_path[self.path.resolve()]:
            for device, dtype, full_only in case.cells(full=full):
                item = CellItem.from_parent(self, name=cell_id(case.id, device, dtype), case=case,
                                            device=device, dtype=dtype)
                item.add_marker("cases")
                for tag in case.tags:
                    item.add_marker(tag)
                if device != "cpu":
                    item.add_marker("cuda")
                if full_only:
                    item.add_marker("full")
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
        hooks = {}
        if not state.runner.isolate:
            on_stage = state.on_stage(self.name)
            if on_stage is not None:
                hooks["on_stage"] = on_stage
        record = state.runner.run(self.case, self.device, self.dtype, **hooks)
        self.user_properties.append((RECORD_KEY, json.dumps(record)))
        status = record["status"]
        if status in statuses.SKIPS:
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
