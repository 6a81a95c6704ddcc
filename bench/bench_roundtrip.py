"""Benchmark: every speed ratio of issue 12, measured in one run (absolute times drift on a shared machine;
ratios taken in the same run do not). Prints figures; asserts nothing.

  per cell      the harness's cell (a forked worker, as `python -m harness run` runs it) against a bare
                standalone round trip of the same model written by hand (from_pretrained on both sides, as a
                naive user script does), LoRA r=4 on every family, interleaved; both with one torch thread
  run overhead  `python -m harness run` (the full set): whole-process wall / the sum of its cells' stage seconds,
                with one worker and with --workers N (the default, 2: the stage seconds then add both workers'
                time, so the ratio also shows how much the two workers overlap)
  cross read    `python -m harness run --artifacts` then `python -m harness read`: a read per cell against a
                round trip per cell, the same cells
  xdist         `pytest cases -m "not cuda"` (the fast set) with -n 0 and -n N: wall, CPU seconds and what
                the machine's load leaves to this run

    nice -n 5 .venv/bin/python bench/bench_roundtrip.py [--repeat 10] [--workers 2] [--skip run,read,xdist]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (forces the hub offline)
from harness.roundtrip.families import FAMILIES, BaseCheckpoints, make_inputs  # noqa: E402
from harness.specs.case import Case  # noqa: E402



def lora_case(family: str) -> Case:
    targets = FAMILIES[family].groups["targets"]
    return Case.from_dict({"id": f"bench-{family}-lora", "family": family,
                           "adapter": {"type": "LoraConfig", "kwargs": {"r": 4, "lora_alpha": 8,
                                                                         "target_modules": list(targets)}},
                           "save": {"mode": "peft_safetensors"}, "load": {"mode": "peft_from_pretrained"}})


def bare_round_trip(family_name: str, base_dir: str, work: str) -> float:
    """The same round trip as a user writes it: from_pretrained, LoRA, perturb, save, from_pretrained again,
    PeftModel.from_pretrained, compare. Returns the max abs difference (must be ~0)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    family = FAMILIES[family_name]
    model_cls = family.classes()[1]
    torch.manual_seed(1234)
    model = model_cls.from_pretrained(base_dir).eval()
    inputs = make_inputs(family, model.config)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(family.groups["targets"])))
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
        model.eval()
        before = model(**inputs).logits
    model.save_pretrained(work)
    torch.manual_seed(54321)
    base = model_cls.from_pretrained(base_dir)
    loaded = PeftModel.from_pretrained(base, work).eval()
    with torch.no_grad():
        after = loaded(**inputs).logits
    return float((after - before).abs().max())


def ms(x: float) -> str:
    return f"{x * 1e3:7.1f} ms"


def stage_sum(record: dict) -> float:
    return sum((record.get("seconds") or {}).values())


def per_cell(repeat: int) -> dict:
    """Bare script vs harness cell, per family, interleaved; medians per family."""
    import torch

    from harness.running.isolation import CellRunner

    torch.set_num_threads(1)  # what the harness's workers use; also keeps libgomp safe to fork after
    bases = BaseCheckpoints()
    runner = CellRunner(isolate="worker", known_issues=[], bases=bases)
    work = tempfile.mkdtemp(prefix="bench-bare-")
    fams = list(FAMILIES)
    cases = {f: lora_case(f) for f in fams}
    dirs = {f: bases.get(FAMILIES[f], {}) for f in fams}
    bare: dict[str, list] = {f: [] for f in fams}
    wall: dict[str, list] = {f: [] for f in fams}
    stages: dict[str, list] = {f: [] for f in fams}
    try:
        for rep in range(repeat + 1):  # rep 0 warms up: imports, first calls, the worker's caches
            for f in fams:
                shutil.rmtree(work, ignore_errors=True)
                start = time.perf_counter()
                diff = bare_round_trip(f, dirs[f], work)
                b = time.perf_counter() - start
                assert diff < 1e-4, (f, diff)
                start = time.perf_counter()
                record = runner.run(cases[f], "cpu", "fp32")
                h = time.perf_counter() - start
                assert record["status"] == "pass", (record["cell_id"], record["status"], record["message"])
                if rep:
                    bare[f].append(b)
                    wall[f].append(h)
                    stages[f].append(stage_sum(record))
    finally:
        runner.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"per cell: LoRA r=4, CPU fp32, one torch thread, median of {repeat} interleaved repetitions")
    print(f"  {'family':18s} {'bare script':>11s} {'harness wall':>13s} {'stage sum':>10s} {'ratio':>6s}")
    out = {}
    for f in fams:
        mb, mw, ms_ = (statistics.median(v[f]) for v in (bare, wall, stages))
        out[f] = (mb, mw, ms_)
        print(f"  {f:18s} {ms(mb)} {ms(mw):>13s} {ms(ms_):>10s} {mw / mb:5.2f}x")
    mb = statistics.mean(v[0] for v in out.values())
    mw = statistics.mean(v[1] for v in out.values())
    print(f"  RATIO per cell (mean over families, harness cell wall / bare script): {mw / mb:.2f}x  "
          f"(target <= 0.6x)")
    return out


def run_cli(args: list[str], env=None) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True,
                            env=env)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"harness {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return seconds


def cells_of(path: str) -> list[dict]:
    with open(path) as fh:
        return json.load(fh)["cells"]


def whole_run(tmp: str, bare: dict | None, workers: int) -> dict:
    """`python -m harness run` (the full set) with one worker and with `workers` (the default): wall, the
    cells' stage seconds (summed over the workers: with two, both workers' time) and the CPU seconds."""
    runs = {}
    for n in dict.fromkeys((1, workers)):
        out = os.path.join(tmp, f"run-{n}.json")
        cpu0 = children_cpu()
        wall = run_cli(["run", "-q", "--workers", str(n), "--out", out])
        cpu = children_cpu() - cpu0
        cells = [c for c in cells_of(out) if c.get("seconds")]
        total = sum(stage_sum(c) for c in cells)
        runs[n] = {"wall": wall, "stages": total, "cells": cells, "cpu": cpu}
        what = "summed over both workers" if n > 1 else "one worker"
        print(f"\nrun: `python -m harness run --workers {n}` (full set): {len(cells)} cells that ran, "
              f"wall {wall:.1f} s, stage seconds {total:.1f} s ({what}), CPU {cpu:.1f} s, "
              f"mean cell {ms(total / len(cells))}, load {os.getloadavg()[0]:.2f}")
        print(f"  RATIO run overhead (wall / stage seconds{', both workers' if n > 1 else ''}): {wall / total:.2f}x"
              f"  (target <= 1.15x){'  <- the default' if n == workers else ''}")
    if len(runs) > 1:
        one, many = runs[1], runs[workers]
        print(f"  {workers} workers against 1: wall {one['wall'] / many['wall']:.2f}x faster, CPU "
              f"{many['cpu'] / one['cpu']:.2f}x, mean cell {many['stages'] / one['stages']:.2f}x as long "
              f"(what the cores left to this run: {one['cpu'] / one['wall']:.2f} / {many['cpu'] / many['wall']:.2f})")
    # what every run pays once before its first cell: the interpreter, torch / transformers / peft, the cases
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import harness.running.cli; from harness.roundtrip.check import "
                    "load_cases; load_cases('cases')"], cwd=ROOT, check=True, capture_output=True)
    fixed = time.perf_counter() - start
    run = runs[workers]
    print(f"  of which imports + loading the cases (a process that does only that): {fixed:.1f} s; the rest: "
          f"{(run['wall'] - fixed) / run['stages']:.2f}x the stage seconds (default run)")
    cells, total = runs[1]["cells"], runs[1]["stages"]
    if bare:
        weighted = statistics.mean(bare[c["family"]][0] for c in cells if c["family"] in bare)
        print(f"  mean cell of the run / bare script of its family: {total / len(cells) / weighted:.2f}x "
              f"(one worker; every method and mode, against the LoRA script)")
    return run


def cross_read(tmp: str) -> None:
    art = os.path.join(tmp, "artifacts")
    wrote = os.path.join(tmp, "write.json")
    read = os.path.join(tmp, "read.json")
    # one worker on both sides: a per-cell cost, which a second worker's contention would inflate on both sides
    write_wall = run_cli(["run", "-q", "--workers", "1", "--device", "cpu", "--artifacts", art, "--out", wrote])
    read_wall = run_cli(["read", art, "-q", "--workers", "1", "--device", "cpu", "--out", read])
    own = {c["cell_id"]: c for c in cells_of(wrote) if c.get("seconds")}
    reads = [c for c in cells_of(read) if c.get("seconds") and c["cell_id"] in own]
    r = sum(stage_sum(c) for c in reads) / len(reads)
    w = sum(stage_sum(own[c["cell_id"]]) for c in reads) / len(reads)
    print(f"\ncross-version read (this env reads its own artifacts, --workers 1): {len(reads)} reads, read phase wall "
          f"{read_wall:.1f} s, write phase wall {write_wall:.1f} s")
    print(f"  mean read {ms(r)}, mean round trip of the same cells {ms(w)} (stage seconds)")
    print(f"  RATIO read / round trip per cell: {r / w:.2f}x (stage seconds), "
          f"{read_wall / write_wall:.2f}x (phase wall)  (target <= 0.5x)")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def xdist(workers: int) -> None:
    print(f"\npytest over cases/ (the fast set, not cuda), whole process incl. imports and collection")
    walls, cpus, probes = {}, {}, {}
    probe = os.path.join(tempfile.mkdtemp(prefix="bench-probe-"), "controller.json")
    env = dict(os.environ, BENCH_PROBE_OUT=probe, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for n in (0, workers):
        cmd = [sys.executable, "-m", "pytest", "cases", "-m", "not cuda", "-q", "-p", "no:cacheprovider", "-n", str(n),
               "-p", "bench.xdist_probe"]
        load = os.getloadavg()[0]
        cpu0 = children_cpu()
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        walls[n] = time.perf_counter() - start
        cpus[n] = children_cpu() - cpu0
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-200:]
        probes[n] = json.load(open(probe)) if os.path.exists(probe) else None
        print(f"  -n {n}: wall {walls[n]:6.1f} s, CPU {cpus[n]:6.1f} s, load before {load:.2f}  ({summary})")
    shutil.rmtree(os.path.dirname(probe), ignore_errors=True)
    if probes.get(workers):
        c = probes[workers]
        print(f"  -n {workers}: the controller alone {c['cpu']:.1f} CPU s (it imported torch: {c['torch']}, peft: "
              f"{c['peft']}: it loads and validates the cases), its {workers} workers "
              f"{cpus[workers] - c['cpu']:.1f} CPU s")
    cores = os.cpu_count() or 1
    # the fixed cost every pytest process pays before its first cell: interpreter, torch / transformers / peft,
    # collecting and validating every case; -n N pays it in each of its N workers, at the same time
    cpu0 = children_cpu()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "cases", "-m", "not cuda", "-q", "-p", "no:cacheprovider",
                    "--collect-only"], cwd=ROOT, capture_output=True, text=True)
    fixed_wall, fixed = time.perf_counter() - start, children_cpu() - cpu0
    cells = max(cpus[0] - fixed, 0.0)
    print(f"  fixed cost of one pytest process (--collect-only): {fixed_wall:.1f} s wall, {fixed:.1f} CPU s; "
          f"the cells: "
          f"{cells:.1f} CPU s. Amdahl on {workers} idle cores: at most "
          f"{(fixed + cells) / (fixed + cells / workers):.2f}x")
    print(f"  RATIO xdist speed-up with {workers} workers: {walls[0] / walls[workers]:.2f}x  (target >= 1.6x)")
    # what N cores can give at best: -n 0's CPU seconds against -n N's CPU seconds spread over N idle cores
    # (each xdist worker imports torch / transformers / peft, collects every case, builds and proves its bases)
    bound = cpus[0] / (cpus[workers] / min(workers, cores))
    print(f"  CPU seconds: -n 0 {cpus[0]:.1f} s, -n {workers} {cpus[workers]:.1f} s: "
          f"on {min(workers, cores)} idle cores "
          f"the speed-up is at most {bound:.2f}x; CPU this run got: -n 0 {cpus[0] / walls[0]:.2f}, "
          f"-n {workers} {cpus[workers] / walls[workers]:.2f} cores of {cores}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="xdist workers, and `harness run --workers`")
    parser.add_argument("--skip", default="", help="comma-separated: cell,run,read,xdist")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    bare = per_cell(args.repeat) if "cell" not in skip else None
    tmp = tempfile.mkdtemp(prefix="bench-speed-")
    try:
        if "run" not in skip:
            whole_run(tmp, bare, args.workers)
        if "read" not in skip:
            cross_read(tmp)
        if "xdist" not in skip:
            xdist(args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
