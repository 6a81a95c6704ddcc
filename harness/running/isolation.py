"""Crash isolation and the per-cell time limit: every cell runs in a child forked from a warm process.

A fresh interpreter per cell would cost ~4 s (importing torch + transformers + peft) against ~50 ms for a warm
cell, so the parent imports everything once and forks one child per cell (copy-on-write: the fork itself costs
a few ms). The child runs `run_roundtrip`, streams the stage it enters and, at the end, its record to the parent
over a pipe, one JSON object per line, and leaves with os._exit. The parent waits with the cell's time limit:

* a record arrives                       -> that record (pass, fail, error, expected-failure, ...);
* the limit passes                       -> the child's process group is killed, status "timeout";
* the child dies without a record        -> status "crashed" (segfault, os._exit, OOM kill, ...),
  both with the stage the child was in.

A cell that never began is never recorded as crashed for the cell's sake: a worker is checked before it is sent
a cell (it may have died while idle), and a worker that dies after it was sent the cell but before it said
"started" was not running the cell; either way the cell runs in a fresh worker. Only when a fresh worker fails
too (or no worker can be forked) does the cell get a "crashed" record with exception_type NOT_STARTED: the
harness could not start it, and `--resume` runs it again.

The temporary folder of the cell is created and removed by the parent, so a killed child leaves nothing
behind; the child's `tempfile` default points inside it. Base checkpoints that a child builds into the
parent's BaseCheckpoints folder are reported back and reused by later cells.

Threads: libgomp (torch's OpenMP) hangs in a forked child if the parent already ran a parallel region, so
children run with one intra-op thread (`torch.set_num_threads(1)`); for these tiny models that is also faster
on a busy machine, and the reduction order is the same on every run. The parent never has to compute.
CUDA: the parent must not initialise CUDA before forking; `torch.cuda.is_available()` is made NVML-based.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback

from harness.roundtrip.cell import MESSAGE_LIMIT, applicability, new_record, run_roundtrip
from harness.running.cells import finish
from harness.specs.case import timeout_problem

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() without initialising CUDA

# The parent's ends of the pipes to live workers: a child forked later closes them first, so that a worker
# sees EOF on its task pipe when its runner closes it (and no child holds another cell's pipe open).
_PARENT_FDS: set[int] = set()

# exception_type of a "crashed" record whose cell never began: the harness could not start it (no worker could
# be forked, or every worker died before the cell began). `--resume` does not keep such records.
NOT_STARTED = "NotStarted"

DEFAULT_TIMEOUT_S = 120.0  # per cell, unless the case sets timeout_s; a warm cell takes well under a second
CHILD_THREADS = 1

# The --isolation option of every front (run, rerun, pytest), defined once.
ISOLATION_CHOICES = ("worker", "fork", "off")
ISOLATION_HELP = ("crash isolation of the cells: a forked worker replaced after a crash or timeout (worker, the "
                  "default), a new child per cell (fork), or none (off: in this process, for debugging)")


# How many forked workers run a `run` / `read` at the same time (harness.running.pool): two where there are two
# cores; a cell's record is the same whichever worker runs it.
DEFAULT_WORKERS = min(2, os.cpu_count() or 1)
WORKERS_HELP = (f"worker processes that run cells at the same time (default: {DEFAULT_WORKERS} with --isolation "
                "worker, else 1); each is crash-isolated and replaced on its own")


def isolate_value(choice: str):
    """The CellRunner `isolate` argument for an --isolation choice."""
    return False if choice == "off" else choice


def _leave_child(code: int) -> None:
    """A forked child never returns into the parent's code (pytest, the CLI loop): flush and leave."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(code)


def cell_timeout(case, default: float | None = None) -> float:
    """The time limit of a cell: the case's timeout_s, else `default`, else DEFAULT_TIMEOUT_S. A limit that is
    not a finite number of seconds in (0, MAX_TIMEOUT_S] raises ValueError (validation and the fronts refuse
    one up front; this guards a Case or a CellRunner built by hand)."""
    limit = case.timeout_s if getattr(case, "timeout_s", None) is not None else default
    limit = DEFAULT_TIMEOUT_S if limit is None else limit
    problem = timeout_problem(limit)
    if problem:
        raise ValueError(f"time limit of {getattr(case, 'id', case)}: {problem}")
    return float(limit)


def can_fork() -> bool:
    return hasattr(os, "fork") and sys.platform != "win32"


def prewarm(case) -> None:
    """Import, in the parent, what the child would otherwise import again for every cell: the model classes
    of the case's family and the PEFT config class (transformers imports its modeling files lazily)."""
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401

    from harness.roundtrip.families import FAMILIES

    FAMILIES[case.family].classes()
    getattr(peft, case.adapter_type, None)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _write_line(fd: int, obj: dict) -> None:
    _write_all(fd, (json.dumps(obj) + "\n").encode())


def close_in_children(fd: int) -> None:
    """A descriptor of the parent that no forked cell process may keep (a report's lock, see checkpoints)."""
    _PARENT_FDS.add(fd)


def forget_in_children(fd: int) -> None:
    _PARENT_FDS.discard(fd)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _close_inherited() -> None:
    for fd in list(_PARENT_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _PARENT_FDS.clear()


def _execute(case, device, dtype, *, bases, workdir, on_stage, task=None, **hooks) -> dict:
    """What a cell's process runs: the round trip (task {"export": True} also exports for readers of other
    releases) or, with task {"read": <artifact cell folder>}, a read of another release's artifact."""
    task = task or {}
    if task.get("read"):
        from harness.artifacts.read import read_cell

        return read_cell(case, task["read"], on_stage=on_stage)
    return run_roundtrip(case, device, dtype, bases=bases, workdir=workdir, on_stage=on_stage,
                         export=bool(task.get("export")), **hooks)


def _child(wfd: int, case, device, dtype, workdir, bases, kwargs) -> None:
    """In the forked child: run the cell, stream stage and record, never return."""
    code = 0
    try:
        _close_inherited()
        os.setpgid(0, 0)  # own process group: a timeout kills whatever the cell started, too
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent decides what an interrupt means
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _enter_cell(case, kwargs.get("task"), workdir)
        import torch

        torch.set_num_threads(CHILD_THREADS)
        snapshot = bases.known()
        record = _execute(case, device, dtype, bases=bases, workdir=workdir,
                          on_stage=lambda name: _write_line(wfd, {"stage": name}), **kwargs)
        new = bases.built_since(snapshot)
        if new:
            _write_line(wfd, {"bases": new})
        _write_line(wfd, {"record": record})
    except BaseException as exc:  # a bug of the harness itself: report it, do not unwind into the parent's code
        code = 3
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-MESSAGE_LIMIT:]
            _write_line(wfd, {"harness_error": f"{type(exc).__name__}: {exc}", "traceback": text})
        except BaseException:
            pass
    finally:
        _leave_child(code)


CRASH_FILE = "crash-traceback.txt"


def _enter_cell(case, task: dict | None, workdir: str) -> None:
    """In the cell's process, before the cell: torch's cache folders settled, the cell's temporary files in its
    folder (tmp/), a crash's Python stack into its crash file."""
    _settle_process_paths(case, task)
    tmp = os.path.join(workdir, "tmp")
    os.makedirs(tmp, exist_ok=True)
    tempfile.tempdir = tmp
    _catch_crash_traceback(workdir)


def _settle_process_paths(case, task: dict | None) -> None:
    """Let torch.compile fix its folders before a cell moves tempfile.tempdir into the cell's own folder.

    torch fixes the folders of its compile cache from tempfile.gettempdir(), once per process: it sets
    TORCHINDUCTOR_CACHE_DIR on the first compile, and torch._inductor.codecache computes its precompiled-header
    folder when it is imported. Where peft / transformers do not import torch._dynamo up front (peft 0.7 with
    transformers 4.36, for one), both happen inside the first compiled cell, so the worker's later compiled cells
    use, and re-create, a cell folder that the runner is removing ("No such file or directory: <old cell>/tmp").
    Here they go to the folder the user's own process would use (torch's default, from the real temporary
    folder): the variable is pinned for every cell, and a save mode that compiles names the modules to import
    first (`SaveMode.process_imports`; imported once per process, where the cell would import them anyway)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = default_cache_dir()
    if not (task or {}).get("read"):  # a read loads what another release saved: it does not run the save mode
        import importlib

        from harness.roundtrip.modes import SAVE_MODES

        for name in SAVE_MODES[case.save_mode].process_imports:
            importlib.import_module(name)


def _catch_crash_traceback(workdir: str) -> None:
    """In the child: a fatal signal writes the Python stack into the cell's folder (faulthandler), not onto
    the terminal; the parent puts it into the crashed record."""
    import faulthandler

    global _crash_fh
    fh = open(os.path.join(workdir, CRASH_FILE), "w")  # noqa: SIM115 - stays open for the signal handler
    faulthandler.enable(file=fh, all_threads=False)
    faulthandler.register(signal.SIGUSR1, file=fh, all_threads=True)  # the parent asks before a timeout kill
    if _crash_fh is not None:
        _crash_fh.close()
    _crash_fh = fh


_crash_fh = None


def _crash_traceback(workdir: str):
    try:
        with open(os.path.join(workdir, CRASH_FILE), encoding="utf-8", errors="replace") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    text = "\n".join(line for line in text.splitlines() if not line.startswith("Extension modules:"))
    return text[:MESSAGE_LIMIT] or None  # faulthandler writes the innermost frame first


def _kill_with_stack(pid: int) -> None:
    """A timeout: ask the child for its Python stack (SIGUSR1 -> faulthandler), then kill it."""
    try:
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.3)
    except OSError:
        pass
    _kill_group(pid)


def _kill_group(pid: int) -> None:
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
            return
        except (ProcessLookupError, PermissionError):
            continue


class _Reader:
    """The parent's side of the pipe: stage, base checkpoints, record or harness error, one line each.
    `wait` reads one cell's lines until it ends; a pool of workers drives the same steps itself (begin, feed
    when select says the pipe is readable, expire at the deadline, end)."""

    def __init__(self, rfd: int, bases):
        self.rfd, self.bases, self.buf = rfd, bases, b""
        self.seen: dict = {}
        self.stage_start = 0.0

    def begin(self) -> None:
        """A cell was sent: what it sends from here on is this cell's."""
        self.seen = {"record": None, "stage": None, "seconds": {}, "harness_error": None, "why": None,
                     "started": False}
        self.stage_start = time.monotonic()

    def feed(self) -> bool:
        """Read what the pipe holds (it is readable); True once the cell ended (record, harness error, EOF)."""
        seen = self.seen
        chunk = os.read(self.rfd, 1 << 16)
        if not chunk:
            seen["why"] = "eof"  # the child has exited
            return True
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if "started" in msg:
                seen["started"] = True
            elif "stage" in msg:
                now = time.monotonic()
                if seen["stage"] is not None:
                    seen["seconds"][seen["stage"]] = round(now - self.stage_start, 6)
                seen["stage"], self.stage_start = msg["stage"], now
            elif "bases" in msg:
                self.bases.adopt(msg["bases"])
            elif "record" in msg:
                seen["record"], seen["why"] = msg["record"], "record"
            elif "harness_error" in msg:
                seen["harness_error"], seen["why"] = msg, "harness_error"
        return seen["why"] in ("record", "harness_error")

    def expire(self) -> None:
        self.seen["why"] = "timeout"

    def end(self) -> dict:
        """What was seen: record, stage, seconds, error, why, started."""
        seen = self.seen
        if seen["stage"] is not None and seen["why"] != "record":
            seen["seconds"][seen["stage"]] = round(time.monotonic() - self.stage_start, 6)
        return seen

    def wait(self, deadline: float) -> dict:
        """Read until a record, EOF or the deadline. Returns what was seen (see end)."""
        self.begin()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.expire()
                break
            ready, _, _ = select.select([self.rfd], [], [], remaining)
            if ready and self.feed():
                break
        return self.end()


def _death(status) -> str:
    """How a process ended, from its wait status, in words."""
    if status is not None and os.WIFSIGNALED(status):
        return f"killed by {_signal_name(os.WTERMSIG(status))}"
    if status is not None and os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return "ended (its exit status is unknown)"


def not_started_record(case, device, dtype, why: str) -> dict:
    """The record of a cell the harness could not start: "crashed" (the run is red), exception_type NOT_STARTED,
    and no stage. --resume runs such a cell again (harness.running.checkpoints.resume_records)."""
    record = new_record(case, device, dtype)
    record["status"], record["exception_type"] = "crashed", NOT_STARTED
    record["message"] = (f"the harness could not start this cell, which never ran: {why} "
                         f"(`--resume` runs it again)")
    return record


def never_started(record: dict) -> bool:
    """A record that says its cell never ran: the harness could not start it. Also the records of an older
    harness that sent a cell to a worker that had died idle ("exit code None", no stage)."""
    return record.get("status") == "crashed" and (
        record.get("exception_type") == NOT_STARTED
        or (record.get("exception_type") == "exit code None" and record.get("stage") is None))


def _verdict(case, device, dtype, seen: dict, status, limit: float, elapsed: float, workdir: str) -> dict:
    """The record of a cell from what its process sent and how it ended."""
    if seen["why"] == "record":
        record = seen["record"]
        record.pop("artifact_dir", None)
        try:
            os.unlink(os.path.join(workdir, CRASH_FILE))
        except OSError:
            pass
        return record
    record = new_record(case, device, dtype)
    record["traceback"] = _crash_traceback(workdir)
    stage = seen["stage"]
    record["stage"], record["seconds"] = stage, seen["seconds"]
    where = f"during stage '{stage}'" if stage else "before its first stage"
    if seen["why"] == "timeout":
        record["status"], record["exception_type"] = "timeout", "Timeout"
        record["message"] = (f"the cell ran past its time limit of {limit:g} s {where} and was killed "
                             f"(set timeout_s in the case file, or --timeout, to change the limit)")
    elif seen["why"] == "harness_error":
        record["status"], record["exception_type"] = "crashed", "HarnessError"
        record["message"] = f"the harness failed in the cell's process {where}: {seen['harness_error']['harness_error']}"
        record["traceback"] = seen["harness_error"]["traceback"]
    else:
        record["status"] = "crashed"
        if status is not None and os.WIFSIGNALED(status):
            sig = _signal_name(os.WTERMSIG(status))
            record["exception_type"] = sig
            hint = " (SIGKILL: often the out-of-memory killer)" if sig == "SIGKILL" else ""
            record["message"] = f"the cell's process was killed by {sig}{hint} {where} after {elapsed:.2f} s"
        else:
            code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else status
            record["exception_type"] = f"exit code {code}"
            record["message"] = f"the cell's process exited with code {code} {where} without a result"
    return record


def _reap(pid: int, kill: bool, stack: bool = False):
    if kill:
        (_kill_with_stack if stack else _kill_group)(pid)
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _finish_workdir(record: dict, workdir: str, keep_artifacts: bool) -> dict:
    if keep_artifacts:
        record["artifact_dir"] = workdir
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        record.pop("artifact_dir", None)
    return record


def _prepare(case, bases):
    from harness.roundtrip.families import BaseCheckpoints

    bases = bases if bases is not None else BaseCheckpoints()
    bases.root  # noqa: B018 - created in the parent, so that children build into one shared folder
    prewarm(case)
    return bases


def run_cell_isolated(case, device: str = "cpu", dtype: str = "fp32", *, known_issues=None, **kwargs) -> dict:
    """run_roundtrip in a child forked for this one cell, with a time limit (see _run_isolated), the record
    classified against `known_issues` (default: the shipped table)."""
    return finish(_run_isolated(case, device, dtype, **kwargs), known_issues)


def _run_isolated(case, device: str = "cpu", dtype: str = "fp32", *, timeout_s: float | None = None,
                  bases=None, keep_artifacts: bool = False, tmp_root: str | None = None, **kwargs) -> dict:
    """run_roundtrip in a child forked for this one cell, with a time limit. Returns the cell's record; a child that
    dies or runs past the limit gives a "crashed" / "timeout" record with the stage it was in. With
    keep_artifacts the cell's folder is kept (record["artifact_dir"]); otherwise it is removed, whatever
    happened. kwargs (after_save, after_load) go to run_roundtrip in the child. The record is raw."""
    skip = applicability(case, device)
    if skip:  # decided in the parent: nothing to isolate
        record = new_record(case, device, dtype)
        record["status"], record["message"] = skip
        return record
    if not can_fork():  # pragma: no cover - the harness runs on Linux / macOS
        workdir = tempfile.mkdtemp(prefix="peft-compat-cell-", dir=tmp_root)
        record = _execute(case, device, dtype, bases=bases, workdir=workdir, **{"on_stage": None, **kwargs})
        return _finish_workdir(record, workdir, keep_artifacts)
    limit = cell_timeout(case, timeout_s)
    own_bases = bases is None  # then the base checkpoint is this cell's alone: removed with it
    bases = _prepare(case, bases)
    workdir = tempfile.mkdtemp(prefix="peft-compat-cell-", dir=tmp_root)
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (coverage does not follow forks)
        os.close(rfd)
        _child(wfd, case, device, dtype, workdir, bases, kwargs)
    os.close(wfd)
    try:
        os.setpgid(pid, pid)
    except OSError:  # the child did it first, or already left
        pass
    try:
        seen = _Reader(rfd, bases).wait(start + limit)
        status = _reap(pid, kill=seen["why"] == "timeout", stack=True)
        pid = None
    finally:
        os.close(rfd)
        if pid is not None:  # interrupted (KeyboardInterrupt / SIGTERM) while waiting: take the child down
            _reap(pid, kill=True)
            shutil.rmtree(workdir, ignore_errors=True)
        if own_bases:
            bases.remove()
    record = _verdict(case, device, dtype, seen, status, limit, time.monotonic() - start, workdir)
    return _finish_workdir(record, workdir, keep_artifacts)


class _Worker:
    """One child forked from the warm parent that runs cell after cell (sent to it pickled over a pipe: our own
    process, not a file) until it crashes or runs past a time limit; then the parent forks a new one.
    The cell's folder is created and removed by the parent, as with a child per cell."""

    def __init__(self, bases):
        task_r, task_w = os.pipe()
        res_r, res_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:  # EAGAIN / ENOMEM: no worker; the caller records that the cell could not start
            for fd in (task_r, task_w, res_r, res_w):
                os.close(fd)
            raise
        if pid == 0:  # pragma: no cover - the child
            os.close(task_w)
            os.close(res_r)
            self._serve(task_r, res_w, bases)
        os.close(task_r)
        os.close(res_w)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        self.pid, self.task_w, self.res_r, self.status = pid, task_w, res_r, None
        _PARENT_FDS.update((task_w, res_r))
        self.reader = _Reader(res_r, bases)

    @staticmethod
    def _serve(task_r: int, res_w: int, bases) -> None:  # pragma: no cover - the child
        code = 0
        try:
            _close_inherited()
            os.setpgid(0, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            import pickle

            import torch

            torch.set_num_threads(CHILD_THREADS)
            tasks = os.fdopen(task_r, "rb")
            while True:
                header = tasks.readline()
                if not header:
                    break  # the parent closed the pipe: done
                case, device, dtype, workdir, task = pickle.loads(tasks.read(int(header)))
                _write_line(res_w, {"started": True})  # from here on a death is the cell's
                try:
                    _enter_cell(case, task, workdir)
                    snapshot = bases.known()
                    record = _execute(case, device, dtype, bases=bases, workdir=workdir, task=task,
                                      on_stage=lambda name: _write_line(res_w, {"stage": name}))
                    new = bases.built_since(snapshot)
                    if new:
                        _write_line(res_w, {"bases": new})
                    _write_line(res_w, {"record": record})
                except Exception as exc:  # a harness bug in one cell: report it, serve the next
                    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-MESSAGE_LIMIT:]
                    _write_line(res_w, {"harness_error": f"{type(exc).__name__}: {exc}", "traceback": text})
                finally:
                    tempfile.tempdir = None
        except BaseException:
            code = 3
        finally:
            _leave_child(code)

    def alive(self) -> bool:
        """Whether the worker still runs; one that died (while idle: OOM killer, a stray kill) is reaped here,
        its wait status kept in self.status."""
        if self.pid is None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, None
        if not pid:
            return True
        self.pid, self.status = None, status
        self._close_pipes()
        return False

    def send(self, case, device, dtype, workdir, task=None) -> bool:
        """Send the worker a cell; False when the worker is gone already (the cell never reached it)."""
        import pickle

        payload = pickle.dumps((case, device, dtype, workdir, task))
        try:
            _write_all(self.task_w, f"{len(payload)}\n".encode() + payload)
        except BrokenPipeError:
            return False
        return True

    def run(self, case, device, dtype, workdir, limit, task=None, while_waiting=None):
        start = time.monotonic()
        if not self.send(case, device, dtype, workdir, task):
            seen = {"record": None, "stage": None, "seconds": {}, "harness_error": None, "why": "eof",
                    "started": False}
            return seen, self.stop(kill=True), 0.0
        if while_waiting is not None:  # the parent's chores, while the worker computes
            while_waiting()
        seen = self.reader.wait(start + limit)
        status = None
        if seen["why"] in ("timeout", "eof"):
            status = self.stop(kill=seen["why"] == "timeout", stack=True)
        return seen, status, time.monotonic() - start

    def _close_pipes(self) -> None:
        for fd in (self.task_w, self.res_r):
            if fd in _PARENT_FDS:
                _PARENT_FDS.discard(fd)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def stop(self, kill: bool = False, stack: bool = False):
        """Close the pipes and reap the worker (killing it first if asked). Returns its wait status."""
        if self.pid is None:
            self._close_pipes()
            return self.status
        self._close_pipes()
        if not kill:  # the worker leaves on EOF; give it a moment, then make sure
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.pid = None
                    return status
                time.sleep(0.01)
            kill = True
        status = _reap(self.pid, kill=kill, stack=stack)
        self.pid = None
        return status


class CellRunner:
    """What the CLI and the pytest plugin call for each cell, with the time limit and --keep-failed evidence.

    isolate="worker" (default): a forked worker runs the cells one after another and is replaced after a crash
    or a timeout (no per-cell cost); "fork": a new child per cell (nothing shared between cells, ~+70 ms per
    cell); False: in this process (no crash isolation, no time limit; for debugging). A cell with test hooks
    (after_save, after_load) always gets a child of its own."""

    def __init__(self, *, isolate="worker", timeout_s: float | None = None, keep_failed: str | None = None,
                 bases=None, known_issues=None, tmp_root: str | None = None, artifacts: str | None = None):
        """tmp_root: where cell folders (and, without `bases`, base checkpoints) go; default: the system's.
        artifacts: keep every round trip that got past its save stage as an artifact for readers of other
        releases, under <artifacts>/<this env>/ (harness.artifacts.store)."""
        from harness.roundtrip.families import BaseCheckpoints

        if timeout_s is not None and timeout_problem(timeout_s):
            raise ValueError(f"timeout_s: {timeout_problem(timeout_s)}")
        self.tmp_root = tmp_root
        if tmp_root is not None:
            os.makedirs(tmp_root, exist_ok=True)
            if bases is None:
                bases = BaseCheckpoints(tempfile.mkdtemp(prefix="peft-compat-bases-", dir=tmp_root))

        if isolate is True:
            isolate = "worker"
        if isolate not in ("worker", "fork", False, None):
            raise ValueError(f"isolate must be 'worker', 'fork' or False, not {isolate!r}")
        self.isolate = isolate if can_fork() else False
        self.timeout_s = timeout_s
        self.keep_failed = keep_failed
        self.artifacts = artifacts
        self.bases = bases if bases is not None else BaseCheckpoints()
        if known_issues is None:
            from harness.specs.known_issues import load_known_issues

            known_issues = load_known_issues()
        self.known_issues = known_issues
        self._worker: _Worker | None = None
        self._trash: list[str] = []  # folders of cells that ended, removed while a worker runs the next cell
        self._spare: str | None = None  # the next cell's folder, made while a worker ran the last one
        self._pool = None  # the harness.running.pool.WorkerPool running this runner's cells, while it runs

    def run(self, case, device: str, dtype: str, *, read: str | None = None, **kwargs) -> dict:
        """The cell's record, classified (the one place the CLI and the plugin classify). With `read` (an
        artifact cell folder of another release) the cell is a cross-version read of that artifact."""
        task, hold = self.task_of(read)
        skip = applicability(case, device)
        if skip:  # decided here: nothing to isolate
            record = new_record(case, device, dtype)
            record["status"], record["message"] = skip
        elif self.isolate == "worker" and not kwargs:
            record = self._run_in_worker(case, device, dtype, hold, task)
        elif self.isolate:
            record = _run_isolated(case, device, dtype, timeout_s=self.timeout_s, bases=self.bases,
                                   keep_artifacts=hold, tmp_root=self.tmp_root, task=task, **kwargs)
        else:
            workdir = tempfile.mkdtemp(prefix="peft-compat-cell-", dir=self.tmp_root)
            try:
                record = _execute(case, device, dtype, bases=self.bases, workdir=workdir, task=task,
                                  **{"on_stage": None, **kwargs})
            finally:
                if not hold:
                    shutil.rmtree(workdir, ignore_errors=True)
            record = _finish_workdir(record, workdir, hold)
        return self.complete(record, case, read, task)

    def task_of(self, read: str | None) -> tuple[dict, bool]:
        """(what the cell's process is asked to do, whether the cell's folder outlives the cell until it is
        stored or kept)."""
        task = {"read": read} if read else {"export": self.artifacts is not None}
        return task, self.keep_failed is not None or bool(task.get("export"))

    def complete(self, record: dict, case, read: str | None, task: dict) -> dict:
        """A raw record -> the run's record: classified, its artifact stored (--artifacts) or its evidence kept
        (--keep-failed), its folder removed."""
        keep = self.keep_failed is not None
        if read and "writer" not in record:  # a read that never started (crashed, timed out, skipped here)
            from harness.artifacts.read import writer_block
            from harness.artifacts.store import read_manifest

            record["writer"] = writer_block(read_manifest(read))
        finish(record, self.known_issues)
        if task.get("export") and record.get("artifact_dir"):
            from harness.artifacts.store import store

            store(record, record["artifact_dir"], self.artifacts)
        if keep and record.get("artifact_dir"):
            from harness.running.outputs import OutputError
            from harness.running.repro import keep_evidence

            try:
                keep_evidence(record, case, self.keep_failed)
            except OSError as exc:  # a full disk, a folder removed under the run: one clear error, not a traceback
                if record.get("artifact_dir"):
                    shutil.rmtree(record["artifact_dir"], ignore_errors=True)
                raise OutputError(f"--keep-failed {self.keep_failed}: cannot keep the evidence of "
                                  f"{record['cell_id']}: {exc.strerror or exc}") from None
        elif record.get("artifact_dir"):
            self.discard(record.pop("artifact_dir"))
        return record

    # A cell's folder is made and removed by this process (a killed worker leaves nothing behind). With worker
    # isolation both happen while a worker computes: the folders of cells that ended are removed, and the next
    # cell's folder is made, after a cell was handed out (tidy); a worker's cell never waits for them.

    def cell_folder(self) -> str:
        """A new, empty folder for a cell: the one made while the last cell ran, else one made now."""
        folder, self._spare = self._spare, None
        if folder is None or not os.path.isdir(folder):
            folder = tempfile.mkdtemp(prefix="peft-compat-cell-", dir=self.tmp_root)
        return folder

    def discard(self, folder: str) -> None:
        """A cell's folder that is done with: removed at the next tidy (worker isolation), else now."""
        if self.isolate == "worker":
            self._trash.append(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)

    def settle_folder(self, record: dict, folder: str, keep: bool) -> dict:
        """_finish_workdir for a worker's cell: a folder that is not kept goes to the next tidy."""
        if keep:
            record["artifact_dir"] = folder
        else:
            self.discard(folder)
            record.pop("artifact_dir", None)
        return record

    def tidy(self) -> None:
        """While a worker runs a cell: remove the folders of the cells that ended, make the next cell's."""
        trash, self._trash = self._trash, []
        for folder in trash:
            shutil.rmtree(folder, ignore_errors=True)
        if self._spare is None:
            try:
                spare = tempfile.mkdtemp(prefix="peft-compat-cell-", dir=self.tmp_root)
            except OSError:  # cell_folder makes it, or says why it cannot
                return
            try:  # what the cell's process makes first (_child, _Worker._serve), made here off its path
                os.mkdir(os.path.join(spare, "tmp"))
                open(os.path.join(spare, CRASH_FILE), "w").close()
            except OSError:
                pass
            self._spare = spare

    def _remove_folders(self) -> None:
        self.tidy()
        if self._spare is not None:
            shutil.rmtree(self._spare, ignore_errors=True)
            self._spare = None

    def _run_in_worker(self, case, device, dtype, keep: bool, task: dict) -> dict:
        limit = cell_timeout(case, self.timeout_s)
        self.bases = _prepare(case, self.bases)
        workdir = self.cell_folder()
        seen, status, elapsed = None, None, 0.0
        deaths = []  # how each worker that was sent this cell died before the cell began
        cannot_fork = None
        done = False
        try:
            while len(deaths) < 2:  # a fresh worker that dies before the cell begins, too: give up
                if self._worker is not None and not self._worker.alive():
                    self._worker.stop()  # it died while idle: this cell was never sent to it
                    self._worker = None
                if self._worker is None:
                    try:
                        self._worker = _Worker(self.bases)
                    except OSError as exc:
                        cannot_fork = f"no worker process could be forked ({exc})"
                        break
                seen, status, elapsed = self._worker.run(case, device, dtype, workdir, limit, task,
                                                         while_waiting=self.tidy)
                if seen["why"] in ("timeout", "eof"):
                    self._worker = None  # stopped by run(); the next cell forks a fresh worker
                if seen["started"] or seen["why"] != "eof":
                    break
                deaths.append(_death(status))  # it died before it began this cell: the cell never ran
                seen = None
            done = True
        finally:
            if not done:  # interrupted while waiting: take the worker down, leave no folder behind
                self.stop_worker(kill=True)
                shutil.rmtree(workdir, ignore_errors=True)
        if seen is None:
            self.discard(workdir)
            why = [f"{len(deaths)} worker process(es) died before the cell began ({', '.join(deaths)})"] \
                if deaths else []
            return not_started_record(case, device, dtype, "; ".join(why + ([cannot_fork] if cannot_fork else [])))
        record = _verdict(case, device, dtype, seen, status, limit, elapsed, workdir)
        return self.settle_folder(record, workdir, keep)

    def stop_worker(self, kill: bool = False) -> None:
        if self._worker is not None:
            self._worker.stop(kill=kill)
            self._worker = None

    def close(self) -> None:
        """Stop the worker(s) and remove the base checkpoints folder (a run leaves no temporary folder behind)."""
        if self._pool is not None:  # a pool's run left suspended (an interrupt between two of its records)
            self._pool.close()
            self._pool = None
        self.stop_worker()
        self._remove_folders()
        self.bases.remove()
