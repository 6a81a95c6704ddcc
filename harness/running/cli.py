"""Command line: `python -m harness run` (the matrix on the installed versions, with a progress display),
`list` (the cells that would run) and `validate` (case files and the known-issues table)."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from harness.artifacts.store import ArtifactError
from harness.reporting.report import ReportError
from harness.roundtrip.check import load_cases
from harness.running import summary
from harness.running.cells import EmptySelection, selected_cells
from harness.running.isolation import (DEFAULT_WORKERS, ISOLATION_CHOICES, ISOLATION_HELP, WORKERS_HELP,
                                       isolate_value)
from harness.running.outputs import OutputError, check_output_file, check_output_folder, same_file
from harness.running.summary import EXIT_OK, EXIT_RED, EXIT_USAGE
from harness.specs import statuses
from harness.specs.case import CaseError, timeout_problem
from harness.specs.known_issues import KnownIssuesError, load_known_issues


class UsageError(ValueError):
    """Options that do not fit together (printed as `error: ...`, exit 2)."""


def default_report_path() -> str:
    """reports/<tox env>.json inside tox, else reports/local.json; reports/compat.json is the merged table."""
    return os.path.join("reports", f"{os.environ.get('TOX_ENV_NAME') or 'local'}.json")


@dataclass(frozen=True)
class Job:
    """One record to make: a cell's round trip, or (read) a cross-version read of an artifact."""
    key: str  # the record's key in the report (harness.reporting.report.record_key)
    case: object
    device: str
    dtype: str
    read: str | None = None  # an artifact cell folder of another release

    @property
    def label(self) -> str:
        return self.key


def run_workers(args) -> int:
    """How many workers run the cells at the same time: --workers, else DEFAULT_WORKERS with worker isolation
    (one with fork / off)."""
    if args.workers is not None:
        return args.workers
    return DEFAULT_WORKERS if args.isolation == "worker" else 1


def _check_run_options(args) -> None:
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: at least 1")
    if args.workers is not None and args.workers > 1 and args.isolation != "worker":
        raise UsageError(f"--workers {args.workers} needs --isolation worker (the default): with "
                         f"{args.isolation} the cells run one after another")
    check_timeout_option(args.timeout, "--timeout")
    if args.timeout is not None and not isolate_value(args.isolation):
        raise UsageError("--timeout needs an isolated run: a cell in this process cannot be stopped "
                         "(drop --isolation off, or --timeout)")
    if getattr(args, "table", False):
        table = os.path.join(os.path.dirname(os.path.abspath(args.out)), "compat.json")
        written = [table] + [os.path.splitext(table)[0] + ext for ext in (".md", ".html")]
        if any(same_file(args.out, path) for path in written):
            raise UsageError(f"--out {args.out}: --table writes the table to {table} (+ .md, .html) next to the "
                             "report, which would overwrite it; give the report another name, e.g. "
                             f"{os.path.join(os.path.dirname(args.out), 'local.json')}")


def _check_outputs(args) -> None:
    """Where the run writes, checked before the first cell (after the selection: an empty one touches nothing)."""
    check_output_file(args.out, "--out")
    if getattr(args, "keep_failed", None):
        check_output_folder(args.keep_failed, "--keep-failed")


def drive(args, jobs: list[Job], signals, *, phase: str = "roundtrip", artifacts: str | None = None,
          known=None) -> tuple[list[dict], str | None, int | None]:
    """Run the jobs with a progress display, keeping the report at args.out valid all along (resume,
    checkpoints; SIGINT / SIGTERM through `signals`, a checkpoints.StopSignals: the first stops the run, a later
    one is ignored while it writes its report). The caller holds the report's lock. Returns (records, why it
    was interrupted or None, exit code then)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.roundtrip.environment import environment
    from harness.running.checkpoints import ReportCheckpoints, interrupt_reason, resume_records
    from harness.running.isolation import CellRunner
    from harness.running.pool import run_jobs

    previous = resume_records(args.out, environment("cpu")) if args.resume else {}
    todo = [job for job in jobs if job.key not in previous]
    console = Console(stderr=True)
    if previous:
        console.print(f"resuming {args.out}: {len(jobs) - len(todo)} of {len(jobs)} records already there")
    checkpoints = ReportCheckpoints(args.out, previous, phase=phase)
    runner = CellRunner(isolate=isolate_value(args.isolation), timeout_s=args.timeout,
                        keep_failed=getattr(args, "keep_failed", None), known_issues=known, artifacts=artifacts)
    counts = summary.counts(previous.values())
    interrupted, exit_code, stopped = None, None, None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[counts]}"))
    workers = run_workers(args)
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        task = progress.add_task("cells", total=len(todo), counts="")
        results = run_jobs(runner, todo, workers, on_start=lambda job: progress.update(
            task, description=escape(job.label)))
        try:
            for job, record in results:
                record = checkpoints.add(record)
                counts[record["status"]] += 1
                if statuses.is_red(record["status"]):
                    progress.console.print(f"[red]{record['status']}[/red] {escape(job.label)} "
                                           f"stage={record['stage']}: {escape((record['message'] or '')[:160])}",
                                           highlight=False)
                progress.update(task, advance=1, counts=summary.counts_line(counts))
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see checkpoints.StopSignals)
            interrupted, exit_code = interrupt_reason(exc)
        except OutputError as exc:  # --keep-failed could not be written: stop; the report keeps what ran
            stopped = exc
        finally:
            signals.defer()  # nothing interrupts the shutdown and the final write
            results.close()  # a cell still in flight (an interrupt) is killed, its folder removed
            runner.close()
    records = list(checkpoints.records.values())
    complete = interrupted is None and stopped is None and {job.key for job in jobs} <= set(checkpoints.records)
    checkpoints.write(complete=complete, reason=interrupted or (f"stopped: {stopped}" if stopped else
                                                                "not every selected cell was recorded"))
    if stopped is not None:
        raise stopped
    console.print(f"{len(records)} {'reads' if phase == 'read' else 'cells'} -> {args.out}: "
                  + summary.counts_line(summary.counts(records)) + (f" (INCOMPLETE: {interrupted})" if interrupted else ""))
    for line in summary.fixed_lines(records):
        console.print(line, style="bold red", markup=False)
    return records, interrupted, exit_code


def _verdict(records, interrupted, exit_code, signals) -> int:
    from harness.running.checkpoints import signal_reason

    if interrupted:
        return exit_code
    if signals.received:  # asked to stop while the finished run wrote its (complete) report
        return signal_reason(signals.received[0])[1]
    return EXIT_RED if summary.red_count(summary.counts(records)) else EXIT_OK


def cmd_run(args) -> int:
    from harness.roundtrip.cell import cell_id
    from harness.running.checkpoints import ReportLock, StopSignals

    _check_run_options(args)
    cases = load_cases(*args.cases)
    known = load_known_issues(args.known_issues)
    jobs = [Job(cell_id(c.id, d, t), c, d, t)
            for c, d, t in selected_cells(cases, args.cases, args.device, args.match, full=not args.fast)]
    _check_outputs(args)  # after the selection (an empty one touches nothing), before the lock creates anything
    # one writer per report: a second run on the same --out is refused (ReportLocked: exit 2) before it reads
    # or writes anything, and the lock is held until this run's last write (the --table merge included)
    with StopSignals() as signals, ReportLock(args.out):
        return _run_locked(args, signals, jobs, known)


def _run_locked(args, signals, jobs, known) -> int:
    if args.artifacts and not args.resume:  # this env's artifacts of an earlier run must not mix with the new ones
        import shutil

        from harness.artifacts.store import writer_name
        from harness.roundtrip.environment import environment

        shutil.rmtree(os.path.join(args.artifacts, writer_name(environment("cpu"))), ignore_errors=True)
    records, interrupted, exit_code = drive(args, jobs, signals, artifacts=args.artifacts, known=known)
    if args.table:
        from harness.reporting.merge import merge_files

        table = os.path.join(os.path.dirname(os.path.abspath(args.out)), "compat.json")
        try:
            merge_files([args.out], table)
        except OSError as exc:
            raise OutputError(f"{table}: cannot write the table of this environment: {exc.strerror or exc} "
                              f"(the report {args.out} is written)") from None
        print(f"table of this environment -> {table} (+ .md, .html)", file=sys.stderr)
    return _verdict(records, interrupted, exit_code, signals)


def cmd_read(args) -> int:
    """The read phase of the cross-version table: this environment reads other environments' artifacts."""
    from harness.artifacts.store import ArtifactError, writer_name
    from harness.roundtrip.environment import environment
    from harness.running.crossread import plan_reads

    _check_run_options(args)
    cases = load_cases(*args.cases)
    known = load_known_issues(args.known_issues)
    chosen = {(c.id, d, t) for c, d, t in selected_cells(cases, args.cases, args.device, args.match,
                                                           full=not args.fast)}
    here = environment("cpu")
    if args.out is None:
        args.out = os.path.join("reports", "cross", f"{writer_name(here)}.json")
    try:
        reads, notes = plan_reads(args.artifacts, cases, here, pairs=args.pairs, only_writers=args.writer,
                                  select=lambda case, device, dtype: (case.id, device, dtype) in chosen)
    except ArtifactError as exc:
        raise UsageError(str(exc)) from None
    for note in notes:
        print(note, file=sys.stderr)
    writers = sorted({r.writer for r in reads})
    print(f"{writer_name(here)} reads {len(reads)} artifacts of {len(writers)} writer(s): {', '.join(writers)}",
          file=sys.stderr)
    jobs = [Job(r.key, r.case, r.device, r.dtype, read=r.cell_dir) for r in reads]
    if not jobs:
        raise EmptySelection(f"no artifact in {args.artifacts} matches the selection: nothing to read")
    _check_outputs(args)
    from harness.running.checkpoints import ReportLock, StopSignals

    with StopSignals() as signals, ReportLock(args.out):
        return _verdict(*drive(args, jobs, signals, phase="read", known=known), signals)


def cmd_list(args) -> int:
    for case, device, dtype in selected_cells(load_cases(*args.cases), args.cases, args.device, args.match,
                                              full=not args.fast):
        print(f"{case.id}[{device}-{dtype}]")
    return EXIT_OK


def check_timeout_option(value, option: str) -> None:
    """A time-limit option (--timeout, pytest --cell-timeout): a finite number of seconds, 0 < s <= one day."""
    problem = None if value is None else timeout_problem(value)
    if problem:
        raise UsageError(f"{option} {value:g}: {problem}")


def cmd_validate(args) -> int:
    cases = load_cases(*args.cases)
    known = load_known_issues(args.known_issues)
    print(f"{len(cases)} case(s) and {len(known)} known issue(s) are valid")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--cases", action="append", default=None, metavar="DIR", help="case folder (default: cases)")
        p.add_argument("--known-issues", default=None, metavar="PATH", help="known-issues table (default: shipped)")
        p.add_argument("--device", action="append", choices=("cpu", "cuda", "cuda_to_cpu"),
                       help="only these devices (default: all; CUDA cells skip without CUDA)")
        p.add_argument("--fast", action="store_true",
                       help="leave out the full-set cells (the dtypes a case lists in full_dtypes)")
        p.add_argument("-k", "--match", action="append", metavar="PATTERN",
                       help="only cells whose id contains PATTERN or matches it as a glob")

    run = sub.add_parser("run", help="run the cells and write the JSON report")
    common(run)
    run.add_argument("--out", default=default_report_path(),
                     help="this environment's report (default: reports/$TOX_ENV_NAME.json, else reports/local.json)")
    run.add_argument("--table", action="store_true",
                     help="also write the table (compat.json, .md, .html) of this report next to it")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    run.add_argument("--isolation", choices=ISOLATION_CHOICES, default="worker", help=ISOLATION_HELP)
    run.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                     help="time limit per cell unless the case sets timeout_s (default: 120)")
    run.add_argument("--workers", type=int, default=None, metavar="N", help=WORKERS_HELP)
    run.add_argument("--keep-failed", default=None, metavar="DIR",
                     help="keep the checkpoint of every failing cell in DIR, with record.json and a standalone repro.py")
    run.add_argument("--resume", action="store_true",
                     help="keep the cells already in --out (an interrupted run) and run only the missing ones")
    run.add_argument("--artifacts", default=None, metavar="DIR",
                     help="keep every cell that got past its save stage as an artifact for the cross-version "
                          "table, under DIR/<this env>/ (read by `python -m harness read DIR` elsewhere)")
    run.set_defaults(func=cmd_run)
    rd = sub.add_parser("read", help="cross-version phase: load the artifacts that other environments wrote "
                                     "with `run --artifacts` and compare with their logits")
    common(rd)
    rd.add_argument("artifacts", metavar="DIR", help="the artifacts folder (one sub-folder per writer)")
    rd.add_argument("--pairs", choices=("neighbours", "all"), default="neighbours",
                    help="which writers to read: the oldest, the newest, this environment and its neighbours by "
                         "version (default), or every writer")
    rd.add_argument("--writer", action="append", metavar="NAME", help="read only these writers")
    rd.add_argument("--out", default=None, help="the read report (default: reports/cross/<this env>.json)")
    rd.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    rd.add_argument("--isolation", choices=ISOLATION_CHOICES, default="worker", help=ISOLATION_HELP)
    rd.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                    help="time limit per read unless the case sets timeout_s (default: 120)")
    rd.add_argument("--workers", type=int, default=None, metavar="N", help=WORKERS_HELP)
    rd.add_argument("--resume", action="store_true", help="keep the reads already in --out, do the missing ones")
    rd.set_defaults(func=cmd_read)
    lst = sub.add_parser("list", help="print the cell ids that `run` would run")
    common(lst)
    lst.set_defaults(func=cmd_list)
    val = sub.add_parser("validate", help="validate the case files and the known-issues table")
    common(val)
    val.set_defaults(func=cmd_validate)
    from harness.running import determinism as _determinism

    rer = sub.add_parser("rerun", help="rerun the cells N times; report any cell whose verdict or max diff changed")
    common(rer)
    _determinism.add_arguments(rer)
    rer.set_defaults(func=_determinism.cmd_rerun)
    from harness.reporting import diff as _diff
    from harness.reporting import merge as _merge

    mrg = sub.add_parser("merge", help="merge per-env reports into reports/compat.{json,md,html}")
    _merge.add_arguments(mrg)
    mrg.set_defaults(func=lambda a: _merge.main_args(a))
    dif = sub.add_parser("diff", help="compare two reports/matrices; exit 1 on a regression, a lost cell or an "
                         "incomplete new run")
    _diff.add_arguments(dif)
    dif.set_defaults(func=lambda a: _diff.main_args(a))
    from harness.running import bisect as _bisect

    bis = sub.add_parser("bisect", help="find the release of peft or transformers at which a cell's outcome changes")
    _bisect.add_arguments(bis)
    bis.set_defaults(func=_bisect.cmd_bisect)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "cases", None) is None:
        args.cases = ["cases"]
    try:
        return args.func(args)
    except (ArtifactError, CaseError, KnownIssuesError, ReportError, UsageError, EmptySelection, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM before a run's cells started: nothing was written
        from harness.running.checkpoints import interrupt_reason

        reason, code = interrupt_reason(exc)
        print(f"{reason}: stopped", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
