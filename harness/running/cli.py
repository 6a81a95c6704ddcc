"""Command line: `python -m harness run` (the matrix on the installed versions, with a progress display),
`list` (the cells that would run) and `validate` (case files and the known-issues table)."""
from __future__ import annotations

import argparse
import os
import sys

from harness.reporting.report import ReportError
from harness.roundtrip.check import load_cases
from harness.running import summary
from harness.running.cells import select_cells
from harness.running.isolation import ISOLATION_CHOICES, ISOLATION_HELP, isolate_value
from harness.running.summary import EXIT_OK, EXIT_RED, EXIT_USAGE
from harness.specs import statuses
from harness.specs.case import CaseError
from harness.specs.known_issues import KnownIssuesError, load_known_issues



class UsageError(ValueError):
    """Options that do not fit together (printed as `error: ...`, exit 2)."""


def default_report_path() -> str:
    """reports/<tox env>.json inside tox, else reports/local.json; reports/compat.json is the merged table."""
    return os.path.join("reports", f"{os.environ.get('TOX_ENV_NAME') or 'local'}.json")


def cmd_run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.roundtrip.cell import cell_id
    from harness.roundtrip.environment import environment
    from harness.running.checkpoints import ReportCheckpoints, interrupt_reason, resume_records, sigterm_as_interrupt
    from harness.running.isolation import CellRunner

    isolation = isolate_value(args.isolation)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: the time limit must be more than 0 seconds")
    if args.timeout is not None and not isolation:
        raise UsageError("--timeout needs an isolated run: a cell in this process cannot be stopped "
                         "(drop --isolation off, or --timeout)")
    if args.keep_failed and os.path.exists(args.keep_failed) and not os.path.isdir(args.keep_failed):
        raise UsageError(f"--keep-failed {args.keep_failed}: exists and is not a folder")
    cases = load_cases(*args.cases)
    known = load_known_issues(args.known_issues)
    cells = list(select_cells(cases, args.device, args.match, full=not args.fast))
    previous = resume_records(args.out, environment("cpu")) if args.resume else {}
    todo = [(c, d, t) for c, d, t in cells if cell_id(c.id, d, t) not in previous]
    console = Console(stderr=True)
    if previous:
        console.print(f"resuming {args.out}: {len(cells) - len(todo)} of {len(cells)} cells already recorded")
    checkpoints = ReportCheckpoints(args.out, previous)
    runner = CellRunner(isolate=isolation, timeout_s=args.timeout, keep_failed=args.keep_failed, known_issues=known)
    counts = summary.counts(previous.values())
    interrupted, exit_code = None, None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[counts]}"))
    with sigterm_as_interrupt(), Progress(*columns, console=console, disable=args.quiet) as progress:
        task = progress.add_task("cells", total=len(todo), counts="")
        try:
            for case, device, dtype in todo:
                progress.update(task, description=f"{case.id}[{device}-{dtype}]")
                record = runner.run(case, device, dtype)
                checkpoints.add(record)
                counts[record["status"]] += 1
                if statuses.is_red(record["status"]):
                    progress.console.print(f"[red]{record['status']}[/red] {record['cell_id']} "
                                           f"stage={record['stage']}: {(record['message'] or '')[:160]}")
                progress.update(task, advance=1, counts=summary.counts_line(counts))
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see harness/interrupt.py)
            interrupted, exit_code = interrupt_reason(exc)
        finally:
            runner.close()
    records = list(checkpoints.records.values())
    selected = {cell_id(c.id, d, t) for c, d, t in cells}
    complete = interrupted is None and selected <= set(checkpoints.records)
    checkpoints.write(complete=complete, reason=interrupted or "not every selected cell was recorded")
    console.print(f"{len(records)} cells -> {args.out}: " + summary.counts_line(summary.counts(records))
                  + (f" (INCOMPLETE: {interrupted})" if interrupted else ""))
    for line in summary.fixed_lines(records):
        console.print(line, style="bold red", markup=False)
    if args.table:
        from harness.reporting.merge import merge_files

        table = os.path.join(os.path.dirname(os.path.abspath(args.out)), "compat.json")
        merge_files([args.out], table)
        console.print(f"table of this environment -> {table} (+ .md, .html)")
    if interrupted:
        return exit_code
    return EXIT_RED if summary.red_count(summary.counts(records)) else EXIT_OK


def cmd_list(args) -> int:
    for case, device, dtype in select_cells(load_cases(*args.cases), args.device, args.match, full=not args.fast):
        print(f"{case.id}[{device}-{dtype}]")
    return EXIT_OK


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
    run.add_argument("--keep-failed", default=None, metavar="DIR",
                     help="keep the checkpoint of every failing cell in DIR, with record.json and a standalone repro.py")
    run.add_argument("--resume", action="store_true",
                     help="keep the cells already in --out (an interrupted run) and run only the missing ones")
    run.set_defaults(func=cmd_run)
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
    dif = sub.add_parser("diff", help="compare two reports/matrices; exit 1 on a regression")
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
    except (CaseError, KnownIssuesError, ReportError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
