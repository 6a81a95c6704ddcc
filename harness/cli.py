"""Command line: `python -m harness run` (the matrix on the installed versions, with a progress display),
`list` (the cells that would run) and `validate` (case files and the known-issues table)."""
from __future__ import annotations

import argparse
import fnmatch
import sys
from collections import Counter

from .case import CaseError, load_cases
from .known_issues import KnownIssuesError, load_known_issues
from .report import BAD_STATUSES, ReportError, write_report

EXIT_OK, EXIT_RED, EXIT_USAGE = 0, 1, 2


def select_cells(cases, devices, match):
    for case in cases:
        for device in case.devices:
            if devices and device not in devices:
                continue
            for dtype in case.dtypes:
                from .roundtrip import cell_id

                cid = cell_id(case.id, device, dtype)
                if match and not any(fnmatch.fnmatchcase(cid, pattern) or pattern in cid for pattern in match):
                    continue
                yield case, device, dtype


def cmd_run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .families import BaseCheckpoints
    from .roundtrip import run_cell

    cases = load_cases(*args.cases)
    known = load_known_issues(args.known_issues)
    cells = list(select_cells(cases, args.device, args.match))
    console = Console(stderr=True)
    bases, records, counts = BaseCheckpoints(), [], Counter()
    interrupted = False
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[counts]}"))
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        task = progress.add_task("cells", total=len(cells), counts="")
        try:
            for case, device, dtype in cells:
                progress.update(task, description=f"{case.id}[{device}-{dtype}]")
                record = run_cell(case, device, dtype, bases=bases, known_issues=known)
                records.append(record)
                counts[record["status"]] += 1
                if record["status"] in BAD_STATUSES:
                    progress.console.print(f"[red]{record['status']}[/red] {record['cell_id']} "
                                           f"stage={record['stage']}: {(record['message'] or '')[:160]}")
                progress.update(task, advance=1, counts=" ".join(f"{s}={n}" for s, n in sorted(counts.items())))
        except KeyboardInterrupt:
            interrupted = True
    write_report(args.out, records, complete=not interrupted and len(records) == len(cells),
                 incomplete_reason="interrupted" if interrupted else None)
    console.print(f"{len(records)} cells -> {args.out}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for record in records:
        if record["status"] == "fixed":
            console.print(f"[bold red]FIXED known issue[/bold red] {record['cell_id']}: {record['known_issue']['reference']}")
    if interrupted:
        return 130
    return EXIT_RED if any(counts[s] for s in BAD_STATUSES) else EXIT_OK


def cmd_list(args) -> int:
    for case, device, dtype in select_cells(load_cases(*args.cases), args.device, args.match):
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
        p.add_argument("-k", "--match", action="append", metavar="PATTERN",
                       help="only cells whose id contains PATTERN or matches it as a glob")

    run = sub.add_parser("run", help="run the cells and write the JSON report")
    common(run)
    run.add_argument("--out", default="reports/compat.json", help="report path (default: reports/compat.json)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    run.set_defaults(func=cmd_run)
    lst = sub.add_parser("list", help="print the cell ids that `run` would run")
    common(lst)
    lst.set_defaults(func=cmd_list)
    val = sub.add_parser("validate", help="validate the case files and the known-issues table")
    common(val)
    val.set_defaults(func=cmd_validate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "cases", None) is None:
        args.cases = ["cases"]
    try:
        return args.func(args)
    except (CaseError, KnownIssuesError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
