"""Benchmark: per-cell seconds of the harness against a bare script doing the same round trip, and the
pytest-xdist speed-up over the shipped cases. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_roundtrip.py [--repeat 30] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
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
from harness.specs.case import Case  # noqa: E402
from harness.roundtrip.families import BaseCheckpoints  # noqa: E402
from harness.running.cells import run_cell  # noqa: E402

CASE = {"id": "bench-bert-lora", "family": "bert_classifier",
        "adapter": {"type": "LoraConfig", "kwargs": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"],
                                                     "modules_to_save": ["classifier"]}},
        "save": {"mode": "peft_safetensors"}, "load": {"mode": "peft_from_pretrained"}}


def bare_round_trip(base_dir: str, work: str) -> float:
    """The same round trip written by hand: load base, LoRA, perturb, save, reload, compare."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import BertForSequenceClassification

    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1234)
    model = BertForSequenceClassification.from_pretrained(base_dir).eval()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                             modules_to_save=["classifier"]))
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
        model.eval()
        before = model(input_ids=ids).logits
    model.save_pretrained(work)
    torch.manual_seed(54321)
    base = BertForSequenceClassification.from_pretrained(base_dir)
    loaded = PeftModel.from_pretrained(base, work).eval()
    with torch.no_grad():
        after = loaded(input_ids=ids).logits
    return float((after - before).abs().max())


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def describe(samples: list[float]) -> str:
    return (f"median {statistics.median(samples) * 1e3:7.1f} ms  min {min(samples) * 1e3:7.1f} ms  "
            f"max {max(samples) * 1e3:7.1f} ms  (n={len(samples)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-xdist", action="store_true")
    args = parser.parse_args()

    case = Case.from_dict(CASE)
    bases = BaseCheckpoints()
    base_dir = bases.get(harness.roundtrip.families.FAMILIES["bert_classifier"], {})
    work = tempfile.mkdtemp(prefix="bench-bare-")

    def bare():
        shutil.rmtree(work, ignore_errors=True)
        bare_round_trip(base_dir, work)

    def harnessed():
        record = run_cell(case, "cpu", "fp32", bases=bases, known_issues=[])
        assert record["status"] == "pass", record["message"]

    bare(), harnessed()  # warm up: imports, first-call caches
    b, h = [], []
    for _ in range(args.repeat):  # interleave so that machine noise hits both alike
        b += timed(bare, 1)
        h += timed(harnessed, 1)
    print("per-cell round trip, BERT classifier + LoRA, CPU fp32, warm process")
    print(f"  bare script : {describe(b)}")
    print(f"  harness     : {describe(h)}")
    print(f"  overhead    : {statistics.median(h) / statistics.median(b):.2f}x "
          f"({(statistics.median(h) - statistics.median(b)) * 1e3:+.1f} ms per cell)")
    shutil.rmtree(work, ignore_errors=True)

    if args.skip_xdist:
        return
    print(f"\npytest over cases/ (not cuda), whole process wall time incl. imports")
    walls = {}
    for n in (0, args.workers):
        cmd = [sys.executable, "-m", "pytest", "cases", "-m", "not cuda", "-q", "-p", "no:cacheprovider", "-n", str(n)]
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        walls[n] = time.perf_counter() - start
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-200:]
        print(f"  -n {n}: {walls[n]:6.2f} s   ({summary})")
    print(f"  xdist speed-up with {args.workers} workers: {walls[0] / walls[args.workers]:.2f}x")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
