"""Benchmark: the cost of crash isolation (one forked child per cell) against the plain in-process run.

Runs the CPU cells of the default matrix in one warm process, alternating: plain run_cell with torch's default
thread count, plain run_cell with one thread (what isolated children use), the isolated runner with a
persistent forked worker (replaced after a crash; the default) and with a new child per cell. Each pass
starts with an empty base-checkpoint cache. Prints per-pass seconds, per-cell overhead and the ratios, with the
spread over the repetitions. Asserts nothing.

    .venv/bin/python bench/bench_isolation.py [--repeat 5] [-k PATTERN]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402,F401  (forces the hub offline)
from harness.roundtrip.check import load_cases  # noqa: E402
from harness.running.cells import select_cells  # noqa: E402
from harness.running.isolation import CellRunner  # noqa: E402
from harness.specs.known_issues import load_known_issues  # noqa: E402


def one_pass(cells, known, mode: str) -> tuple[float, list]:
    import torch

    default_threads = torch.get_num_threads()
    if mode == "plain-1thread":
        torch.set_num_threads(1)
    runner = CellRunner(isolate={"worker": "worker", "fork": "fork"}.get(mode, False), known_issues=known)
    start = time.perf_counter()
    records = [runner.run(c, d, t) for c, d, t in cells]
    seconds = time.perf_counter() - start
    runner.close()
    torch.set_num_threads(default_threads)
    return seconds, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("-k", "--match", action="append")
    parser.add_argument("--modes", default="plain,plain-1thread,worker,fork")
    args = parser.parse_args()
    cells = list(select_cells(load_cases(str(ROOT / "cases")), ["cpu"], args.match))
    known = load_known_issues()
    modes = args.modes.split(",")
    one_pass(cells, known, "plain-1thread")  # warm-up: imports and first-call costs of every family
    times: dict[str, list[float]] = {m: [] for m in modes}
    verdicts: dict[str, set] = {m: set() for m in modes}
    for rep in range(args.repeat):
        for mode in (modes if rep % 2 == 0 else modes[::-1]):
            seconds, records = one_pass(cells, known, mode)
            times[mode].append(seconds)
            verdicts[mode].add(tuple((r["cell_id"], r["status"]) for r in records))
            print(f"rep {rep} {mode:14s} {seconds:7.2f} s  ({len(cells)} cells, {1000 * seconds / len(cells):.1f} ms/cell)",
                  flush=True)
    print(f"\n{len(cells)} CPU cells, {args.repeat} repetitions (median, min-max):")
    med = {m: statistics.median(v) for m, v in times.items()}
    for mode, values in times.items():
        print(f"  {mode:14s} {med[mode]:7.2f} s  [{min(values):.2f}-{max(values):.2f}]  "
              f"{1000 * med[mode] / len(cells):.1f} ms/cell")
    for iso in ("worker", "fork"):
        for base in ("plain", "plain-1thread"):
            if base in med and iso in med:
                ratios = [i / p for i, p in zip(times[iso], times[base])]
                per_cell = [1000 * (i - p) / len(cells) for i, p in zip(times[iso], times[base])]
                print(f"  {iso} / {base}: {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}], "
                      f"overhead {statistics.median(per_cell):+.1f} ms/cell [{min(per_cell):+.1f} to {max(per_cell):+.1f}]")
    print("  same verdicts in every pass and mode:", len(set().union(*verdicts.values())) == 1)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"  peak RSS: this process {own:.0f} MiB, largest cell child {kids:.0f} MiB")


if __name__ == "__main__":
    main()
