"""Several forked workers running the cells of one run at the same time (`run` / `read` with `--workers N`).

Each worker is an isolation._Worker, forked from the warm parent as with one worker. The parent hands a cell to
every idle worker, waits on all their pipes at once (select), and settles each cell as it ends, as
CellRunner._run_in_worker does with one worker: the cell's time limit counts from when it was handed out; a
record, a timeout, a death or a harness error gives the same verdict; a worker found dead before it is sent a
cell is replaced, and a cell whose worker died before it began runs in a fresh worker (a second such death, or
no fork at all: a NotStarted record). A worker that crashed or timed out is replaced at its next cell; the
other worker goes on. Records come back in the order cells end (the report is keyed and sorted by cell).

Each worker keeps its own per-process caches (loaded bases, base logits, compiled templates), each proven as
with one worker; base checkpoints are shared through the runner's folder (BaseCheckpoints builds atomically).
A record's stage seconds are its own worker's, so the stage seconds of a run add both workers' time.
"""
from __future__ import annotations

import select
import shutil
import time
from dataclasses import dataclass, field

from harness.roundtrip.cell import applicability, new_record
from harness.running.isolation import _death, _prepare, _verdict, _Worker, cell_timeout, not_started_record


@dataclass
class _InFlight:
    """A cell handed to a worker: its job, its folder, its limit and the deaths of workers sent it before."""
    job: object
    task: dict
    hold: bool
    limit: float
    workdir: str
    start: float = 0.0
    deaths: list = field(default_factory=list)

    @property
    def deadline(self) -> float:
        return self.start + self.limit


class _Slot:
    def __init__(self):
        self.worker: _Worker | None = None
        self.cell: _InFlight | None = None
        self.families: set = set()  # the families its worker ran (see WorkerPool._pick)


def run_jobs(runner, jobs, workers: int = 1, on_start=None):
    """Records of `jobs` (objects with case, device, dtype and read) run by `runner` (an isolation.CellRunner),
    as (job, record) pairs in the order they end. workers > 1 (worker isolation only): a WorkerPool of that
    many workers; otherwise one cell after another, as runner.run. on_start(job): a job was handed out."""
    if workers > 1 and runner.isolate == "worker":
        pool = runner._pool = WorkerPool(runner, workers)
        try:
            yield from pool.run(jobs, on_start)
        finally:
            pool.close()
            runner._pool = None
        return
    for job in jobs:
        if on_start is not None:
            on_start(job)
        yield job, runner.run(job.case, job.device, job.dtype, read=job.read)


class WorkerPool:
    """`workers` slots of one CellRunner (its bases, time limit, known issues, artifacts, --keep-failed)."""

    def __init__(self, runner, workers: int):
        self.runner = runner
        self.slots = [_Slot() for _ in range(workers)]
        self.ended: list = []  # (job, record, task) of cells that ended, for the runner to complete

    def run(self, jobs, on_start=None):
        """(job, record) for every job, in the order they end. A worker whose cell ended gets its next cell
        before the runner completes the record (classifies it, stores its artifact, and the caller writes it
        into the report): the parent's own work runs while the workers compute."""
        pending = list(jobs)
        while True:
            for slot in self.slots:
                while slot.cell is None and pending:
                    job = pending.pop(self._pick(slot, pending))
                    if on_start is not None:
                        on_start(job)
                    record = self._start(slot, job)
                    if record is not None:  # skipped here, or it could not start
                        yield job, record
            while self.ended:
                job, record, task = self.ended.pop(0)
                yield job, record if task is None else self.runner.complete(record, job.case, job.read, task)
            active = [slot for slot in self.slots if slot.cell is not None]
            if not active:
                return
            self.runner.tidy()  # while the workers compute
            timeout = max(0.0, min(slot.cell.deadline for slot in active) - time.monotonic())
            ready, _, _ = select.select([slot.worker.res_r for slot in active], [], [], timeout)
            now = time.monotonic()
            for slot in active:
                if slot.worker.res_r in ready:
                    if not slot.worker.reader.feed():
                        continue
                elif now >= slot.cell.deadline:
                    slot.worker.reader.expire()
                else:
                    continue
                ended = self._settle(slot)
                if ended is not None:
                    self.ended.append(ended)

    def _pick(self, slot: _Slot, pending: list) -> int:
        """Which pending job the slot's worker runs next: one of a family it ran before (its loaded bases,
        their logits and lazily imported modules are warm there), else one of a family no other worker has
        taken, else the first. A matter of speed only: every worker gives a cell the same record."""
        others = set().union(*(s.families for s in self.slots if s is not slot))
        for wanted in (lambda f: f in slot.families, lambda f: f not in others):
            for index, job in enumerate(pending):
                if wanted(job.case.family):
                    slot.families.add(job.case.family)
                    return index
        slot.families.add(pending[0].case.family)
        return 0

    def _start(self, slot: _Slot, job):
        runner = self.runner
        task, hold = runner.task_of(job.read)
        skip = applicability(job.case, job.device)
        if skip:  # decided here: nothing to isolate
            record = new_record(job.case, job.device, job.dtype)
            record["status"], record["message"] = skip
            return runner.complete(record, job.case, job.read, task)
        limit = cell_timeout(job.case, runner.timeout_s)
        runner.bases = _prepare(job.case, runner.bases)
        slot.cell = _InFlight(job, task, hold, limit, runner.cell_folder())
        return self._dispatch(slot)

    def _dispatch(self, slot: _Slot):
        """Send the slot's cell to its worker (a fresh one if it has none or it died idle): None once sent,
        else the NotStarted record."""
        cell, job = slot.cell, slot.cell.job
        cannot_fork = None
        while len(cell.deaths) < 2:  # a fresh worker that dies before the cell begins, too: give up
            if slot.worker is not None and not slot.worker.alive():
                slot.worker.stop()  # it died while idle: this cell was never sent to it
                slot.worker = None
            if slot.worker is None:
                try:
                    slot.worker = _Worker(self.runner.bases)
                except OSError as exc:
                    cannot_fork = f"no worker process could be forked ({exc})"
                    break
            cell.start = time.monotonic()
            if slot.worker.send(job.case, job.device, job.dtype, cell.workdir, cell.task):
                slot.worker.reader.begin()
                return None
            cell.deaths.append(_death(slot.worker.stop(kill=True)))  # gone already: the cell never reached it
            slot.worker = None
        slot.cell = None
        self.runner.discard(cell.workdir)
        deaths = cell.deaths
        why = [f"{len(deaths)} worker process(es) died before the cell began ({', '.join(deaths)})"] if deaths else []
        record = not_started_record(job.case, job.device, job.dtype,
                                    "; ".join(why + ([cannot_fork] if cannot_fork else [])))
        return self.runner.complete(record, job.case, job.read, cell.task)

    def _settle(self, slot: _Slot):
        """The slot's cell ended (record, harness error, EOF or its time limit): (job, raw record, task) for
        the runner to complete, (job, record, None) for a cell that could not start, or None when it was sent
        again to a fresh worker (its worker died before it began)."""
        cell, job = slot.cell, slot.cell.job
        seen = slot.worker.reader.end()
        status = None
        if seen["why"] in ("timeout", "eof"):
            status = slot.worker.stop(kill=seen["why"] == "timeout", stack=True)
            slot.worker = None  # the next cell of this slot forks a fresh worker
        if not seen["started"] and seen["why"] == "eof":
            cell.deaths.append(_death(status))  # it died before it began this cell: the cell never ran
            record = self._dispatch(slot)
            return None if record is None else (job, record, None)
        slot.cell = None
        record = _verdict(job.case, job.device, job.dtype, seen, status, cell.limit, time.monotonic() - cell.start,
                          cell.workdir)
        return job, self.runner.settle_folder(record, cell.workdir, cell.hold), cell.task

    def close(self) -> None:
        """Stop every worker; a cell still in flight (an interrupt) is killed and its folder removed."""
        for slot in self.slots:
            if slot.worker is not None:
                slot.worker.stop(kill=slot.cell is not None)
            if slot.cell is not None:
                shutil.rmtree(slot.cell.workdir, ignore_errors=True)
            slot.worker, slot.cell = None, None
        for _, record, _ in self.ended:  # ended, never completed (an interrupt): a kept folder goes too
            if record.get("artifact_dir"):
                shutil.rmtree(record.pop("artifact_dir"), ignore_errors=True)
        self.ended.clear()
