"""`python -m harness bisect CELL --package peft|transformers`: the first release at which a cell's outcome changes.

The candidates are the package's releases from the package index (harness.running.releases) between --good
and --bad (default: the oldest release the tox matrix pins, and the newest release). The other package is held
at a stated release (--hold transformers==4.45.2) or, by default, at the release contemporary with each
candidate: the newest one uploaded before the candidate (see releases.contemporary for why). Each probe runs
the cell in a throwaway environment (harness.running.probe_envs) and yields its raw outcome: status, stage and
a stable signature of the exception (harness.specs.signatures). The search:

1. probes both ends (the lower end's outcome is the reference);
2. binary-searches the adjacent pair (before, after) with before like the reference and after not; a candidate
   that cannot be installed or imported is reported and skipped, never guessed: when some lie between the two,
   the answer names them;
3. reruns both sides of that pair until each has --reruns runs; a side whose majority outcome flips sends the
   search round again (the runs so far are kept), so a flaky probe cannot place the edge;
4. with contemporary pairing, checks that the change belongs to the bisected package: it probes `before` with
   the other package at `after`'s release (or `after` at `before`'s): same outcome as `before` = the package's
   own change; same as `after` = the other package's change (bisect that one).

Several cells (`bisect CELL CELL ... --package peft --good A --bad B`) are bisected over the same releases one
after the other, and every probe process runs the whole group: the later cells mostly read their runs from the
cache. Probes are cached per (cell, versions, case and round-trip code digest) in
~/.cache/peft-compat/probes.json (--cache-dir, or $PEFT_COMPAT_CACHE), next to the environments (envs/) and the
index answers (index/, kept 6 hours).
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shlex
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

from packaging.version import Version

from harness.running.probe_envs import COMPARE_LEVELS, Untestable, describe, outcome_key, pins_text

PACKAGES = ("peft", "transformers")
DEFAULT_FLOOR = {"peft": "0.7.1", "transformers": "4.36.2"}  # the oldest pins of tox.ini (read from it if present)


# --- the search (pure: a probe function over an ordered list of versions) ----------------------------------------

def majority(runs: list):
    """The most frequent outcome; a tie goes to the one seen first."""
    counts = Counter(runs)
    best = max(counts.values())
    return next(r for r in runs if counts[r] == best)


def search(candidates: list, probe, *, reruns: int = 3, log=None) -> dict:
    """Find the adjacent pair of `candidates` (ordered, oldest first) where the outcome changes away from the
    oldest testable candidate's. `probe(version)` returns a hashable outcome or raises Untestable.

    Returns {"state": "found" | "no-change" | "untestable", "before", "after", "before_outcome",
    "after_outcome", "untestable": {version: reason}, "untested_between": [...], "runs": {version: [...]},
    "flaky": {version: {outcome: count}}, "rounds": n}."""
    log = log or (lambda message: None)
    runs: dict = {}
    untestable: dict = {}
    order = list(candidates)

    def observe(version, n: int = 1):
        seen = runs.setdefault(version, [])
        while len(seen) < n:
            try:
                seen.append(probe(version))
            except Untestable as exc:
                untestable[version] = str(exc)
                if not seen:
                    runs.pop(version, None)
                log(f"  {version}: skipped, cannot be probed: {exc}")
                raise
        return majority(seen)

    def first_testable(indices):
        for i in indices:
            if order[i] in untestable:
                continue
            try:
                observe(order[i])
                return i
            except Untestable:
                continue
        return None

    def result(state, lo=None, hi=None, rounds=0):
        out = {"state": state, "before": None, "after": None, "before_outcome": None, "after_outcome": None,
               "untestable": {v: untestable[v] for v in order if v in untestable}, "untested_between": [],
               "runs": {v: list(runs[v]) for v in order if v in runs}, "rounds": rounds,
               "flaky": {v: dict(Counter(runs[v])) for v in order if v in runs and len(set(runs[v])) > 1}}
        if lo is not None:
            out["before"], out["before_outcome"] = order[lo], majority(runs[order[lo]])
        if hi is not None:
            out["after"], out["after_outcome"] = order[hi], majority(runs[order[hi]])
        if lo is not None and hi is not None:
            out["untested_between"] = [order[i] for i in range(lo + 1, hi)]
        return out

    low = first_testable(range(len(order)))
    high = first_testable(range(len(order) - 1, low, -1)) if low is not None else None
    if low is None or high is None:
        return result("untestable", low, high)
    for rounds in range(1, len(order) * max(reruns, 1) + 2):
        reference = majority(runs[order[low]])
        if majority(runs[order[high]]) == reference:
            # the ends agree: make sure of both before saying so
            try:
                observe(order[low], reruns)
                observe(order[high], reruns)
            except Untestable:
                pass
            if majority(runs[order[low]]) == majority(runs[order[high]]):
                return result("no-change", low, high, rounds)
            continue
        lo, hi = low, high
        while True:
            inner = [i for i in range(lo + 1, hi) if order[i] not in untestable]
            if not inner:
                break
            mid = inner[len(inner) // 2]
            try:
                outcome = observe(order[mid])
            except Untestable:
                continue
            if outcome == reference:
                lo = mid
            else:
                hi = mid
        log(f"  edge between {order[lo]} and {order[hi]}: rerunning both sides ({reruns} runs each)")
        try:
            observe(order[lo], reruns)
            observe(order[hi], reruns)
        except Untestable:
            continue  # it could be installed a moment ago: the search goes round without it
        if majority(runs[order[lo]]) == reference and majority(runs[order[hi]]) != reference \
                and majority(runs[order[low]]) == reference:
            return result("found", lo, hi, rounds)
        log("  a rerun changed a side's majority outcome: searching again with every run so far")
    return result("unstable", rounds=rounds)


# --- the command ---------------------------------------------------------------------------------------------------

def matrix_floor(root: Path) -> dict:
    """The oldest peft and transformers that tox.ini pins (the default lower end of a bisection)."""
    floor = dict(DEFAULT_FLOOR)
    path = root / "tox.ini"
    if not path.exists():
        return floor
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path)
    deps = parser.get("testenv", "deps", fallback="")
    for package in PACKAGES:
        pins = [Version(v) for v in re.findall(rf"^\s*\w+:\s*{package}==([\w.]+)", deps, re.M)]
        if pins:
            floor[package] = str(min(pins))
    return floor


def parse_hold(text: str | None, package: str) -> tuple[str, str | None]:
    """--hold 'transformers==4.45.2' -> ('transformers', '4.45.2'); None / 'contemporary' -> (other, None)."""
    other = next(p for p in PACKAGES if p != package)
    if text is None or text in ("contemporary", f"{other}=contemporary", f"{other}==contemporary"):
        return other, None
    match = re.fullmatch(r"\s*([\w-]+)\s*==\s*([\w.+-]+)\s*", text)
    if not match:
        raise ValueError(f"--hold {text!r}: write PACKAGE==VERSION (e.g. {other}==4.45.2) or 'contemporary'")
    if match.group(1) != other:
        raise ValueError(f"--hold {text!r}: only the other package ({other}) can be held while {package} is "
                         "bisected")
    return other, match.group(2)


def _label(before_key, after_key) -> tuple[str, str]:
    """(word for `after`, word for `before`): first failing / last passing, or last failing / first passing."""
    before_pass, after_pass = before_key[0] == "pass", after_key[0] == "pass"
    if before_pass and not after_pass:
        return "first failing", "last passing"
    if after_pass and not before_pass:
        return "first passing", "last failing"
    return "first changed", "last as before"


def command_line(args, cell: str) -> str:
    parts = ["python -m harness bisect", shlex.quote(cell), "--package", args.package]
    for flag, value in (("--good", args.good), ("--bad", args.bad), ("--hold", args.hold)):
        if value:
            parts += [flag, shlex.quote(value)]
    if args.compare != "signature":
        parts += ["--compare", args.compare]
    if getattr(args, "read_from", None):
        parts += ["--read-from", shlex.quote(os.path.relpath(args.read_from) if os.path.isabs(args.read_from)
                                             and not os.path.relpath(args.read_from).startswith("..")
                                             else args.read_from)]
    if getattr(args, "read_by", None):
        parts += ["--read-by", shlex.quote(args.read_by)]
    return " ".join(parts)


def parse_read_by(text: str) -> dict:
    """--read-by 'peft==0.7.1,transformers==4.36.2' -> {'peft': '0.7.1', 'transformers': '4.36.2'}."""
    pins = {}
    for part in text.split(","):
        match = re.fullmatch(r"\s*([\w-]+)\s*==\s*([\w.+-]+)\s*", part)
        if not match or match.group(1) not in PACKAGES or match.group(1) in pins:
            raise ValueError(f"--read-by {text!r}: write peft==VERSION,transformers==VERSION (the reader's releases)")
        pins[match.group(1)] = match.group(2)
    if set(pins) != set(PACKAGES):
        raise ValueError(f"--read-by {text!r}: name both releases of the reader, peft==VERSION,transformers==VERSION")
    return pins


def _find_case(root: Path, cell: str):
    """The case of `cell`, from the checkout's cases/ (the folder every probe runs)."""
    from harness.roundtrip.check import load_cases
    from harness.running.cells import select_cells

    cases = load_cases(str(root / "cases"))
    for case, device, dtype in select_cells(cases, full=True):
        if f"{case.id}[{device}-{dtype}]" == cell:
            return case
    near = sorted(f"{c.id}[{d}-{t}]" for c, d, t in select_cells(cases, match=[cell.split("[")[0]], full=True))
    hint = f" (cells of that case: {', '.join(near[:6])})" if near else " (see `python -m harness list`)"
    raise ValueError(f"no cell {cell!r}: give a full cell id, CASE[DEVICE-DTYPE]{hint}")


def run_bisect(args, *, log=None) -> list[dict]:
    """One answer per cell of args.cells, bisected over the same releases (their probes share processes)."""
    from harness.running import releases as rel
    from harness.running.probe_envs import EnvBuilder, Prober

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    root = Path(args.root).resolve() if args.root else Path(__file__).resolve().parents[2]
    cells = list(dict.fromkeys(args.cells))
    cases = {cell: _find_case(root, cell) for cell in cells}
    other, held = parse_hold(args.hold, args.package)
    python_version = ".".join(map(str, sys.version_info[:3]))
    mine = rel.list_releases(args.package, python=python_version, cache=args.cache_dir, log=log)
    theirs = rel.list_releases(other, python=python_version, cache=args.cache_dir, log=log)
    floor = matrix_floor(root)
    good = rel.find(mine, args.good) if args.good else rel.find(mine, floor[args.package])
    bad = rel.find(mine, args.bad) if args.bad else mine[-1]
    if good.version == bad.version:
        raise ValueError(f"--good and --bad are the same release ({good})")
    low, high = sorted((good, bad))
    window = rel.between(mine, low.version, high.version)
    if held is not None:
        rel.find(theirs, held)  # a typo'd --hold fails here, before any environment is built
    by_text = {r.text: r for r in window}

    def pins_for(version: str, other_version: str | None = None) -> dict:
        if other_version is None:
            if held is not None:
                other_version = held
            else:
                partner = rel.contemporary(by_text[version], theirs)
                if partner is None:
                    raise Untestable(f"no {other} release existed before {args.package} {version}")
                other_version = partner.text
        return {args.package: version, other: other_version}

    builder = EnvBuilder(root, cache=args.cache_dir, uv=args.uv, python=args.python,
                         retry_untestable=args.retry_untestable, log=log)
    cross = _cross_probe(args)
    prober = Prober({cell: cases[cell].path for cell in cells}, builder, timeout_s=args.timeout,
                    use_cache=not args.no_cache, log=log, cross=cross)
    hold_text = f"{other}=={held}" if held else f"{other} contemporary (newest release before each candidate)"
    if cross is not None:
        hold_text += (f"; each candidate reads the artifacts of {cross.writer}" if cross.reader_pins is None else
                      f"; each candidate writes, {pins_text(cross.reader_pins)} reads")
    answers = []
    for cell in cells:
        started = time.monotonic()
        log(f"bisect {cell}: {args.package} {low} .. {high} ({len(window)} releases), {hold_text}")
        found = search([r.text for r in window], lambda version: outcome_key(prober(pins_for(version), cell),
                                                                             args.compare),
                       reruns=args.reruns, log=log)
        answer = {"cell": cell, "package": args.package, "good": good.text, "bad": bad.text,
                  "side": None if cross is None else ("reader" if cross.reader_pins is None else "writer"),
                  "hold": {other: held or "contemporary"}, "compare": args.compare, "reruns": args.reruns,
                  "candidates": [r.text for r in window], "state": found["state"],
                  "untestable": found["untestable"], "untested_between": found["untested_between"],
                  "flaky": {v: {describe(k): n for k, n in c.items()} for v, c in found["flaky"].items()},
                  "runs": {v: [describe(k) for k in ks] for v, ks in found["runs"].items()}}
        if found["state"] == "found":
            before, after = found["before"], found["after"]
            after_word, before_word = _label(found["before_outcome"], found["after_outcome"])
            answer.update({"before": before, "after": after,
                           "before_outcome": describe(found["before_outcome"]),
                           "after_outcome": describe(found["after_outcome"]),
                           "before_versions": _safe_pins(pins_for, before),
                           "after_versions": _safe_pins(pins_for, after),
                           "labels": {"after": after_word, "before": before_word},
                           after_word.replace(" ", "_"): after, before_word.replace(" ", "_"): before})
            answer["attribution"] = _attribute(args, pins_for, lambda pins: prober(pins, cell), found, other,
                                               held, log)
        answer.update({"probes": prober.ran[cell], "probes_from_cache": prober.from_cache[cell],
                       "group_processes": prober.processes if len(cells) > 1 else None,
                       "seconds": round(time.monotonic() - started, 1), "date": date.today().isoformat(),
                       "command": command_line(args, cell),
                       "history": [h for h in prober.history if h["cell"] == cell]})
        answers.append(answer)
    return answers


def _cross_probe(args):
    """--read-from / --read-by: the candidates are readers of one writer's artifacts, or writers read by one
    reader; None for the candidate's own round trip."""
    from harness.running.probe_envs import CrossProbe

    read_from, read_by = getattr(args, "read_from", None), getattr(args, "read_by", None)
    if read_from and read_by:
        raise ValueError("give --read-from (the candidates read) or --read-by (the candidates write), not both")
    if read_from:
        return CrossProbe.reading(read_from)
    if read_by:
        return CrossProbe(reader_pins=parse_read_by(read_by))
    return None


def _safe_pins(pins_for, version):
    try:
        return pins_for(version)
    except Untestable:
        return None


def _attribute(args, pins_for, prober, found, other, held, log) -> dict:
    """With contemporary pairing the two sides differ in both packages: hold the other one still and see
    whether the change stays with the bisected package."""
    before, after = found["before"], found["after"]
    b_pins, a_pins = pins_for(before), pins_for(after)
    if held is not None or b_pins[other] == a_pins[other]:
        return {"verdict": args.package, "how": f"{other} {b_pins[other]} on both sides"}
    for version, other_version, mine_is in ((before, a_pins[other], found["before_outcome"]),
                                            (after, b_pins[other], found["after_outcome"])):
        pins = pins_for(version, other_version)
        log(f"  attribution: {args.package} {version} with {other} {other_version}")
        try:
            key = outcome_key(prober(pins), args.compare)
        except Untestable as exc:
            log(f"  attribution probe skipped: {exc}")
            continue
        if key == mine_is:
            return {"verdict": args.package, "how": f"{args.package} {version} with {other} {other_version} still "
                    f"gives {describe(key)}: the change follows {args.package}"}
        return {"verdict": other, "how": f"{args.package} {version} with {other} {other_version} gives "
                f"{describe(key)}: the change follows {other}; bisect {other} with --hold {args.package}=={version}"}
    return {"verdict": "unknown", "how": f"no mixed pair ({args.package} x {other}) could be probed"}


def summary_line(answer: dict) -> str:
    pkg = answer["package"]
    cost = f"{answer['probes']} probes ({answer['probes_from_cache']} from cache), {answer['seconds']:.0f} s"
    if answer["state"] == "found":
        labels = answer["labels"]
        line = (f"{labels['after']}: {pkg} {answer['after']} ({answer['after_outcome']}); "
                f"{labels['before']}: {answer['before']} ({answer['before_outcome']}); {cost}")
        if answer["untested_between"]:
            line += (f"; NOT PROBED between them (could not be installed or imported): "
                     f"{', '.join(answer['untested_between'])}")
        return line
    if answer["state"] == "no-change":
        return f"no change: {pkg} {answer['good']} and {answer['bad']} give the same outcome; {cost}"
    if answer["state"] == "untestable":
        return f"cannot bisect: fewer than two {pkg} releases in {answer['good']}..{answer['bad']} could be probed; {cost}"
    return f"unstable: the outcome kept changing under reruns, no edge found; {cost}"


def toml_snippet(answer: dict) -> str | None:
    """The `bisected` item for known_issues.toml (failing = the side that shows the entry's failure)."""
    if answer["state"] != "found":
        return None
    before_pass = answer["before_outcome"] == "pass"
    fields = {"package": answer["package"]}
    if answer.get("side"):
        fields["side"] = answer["side"]
    if before_pass or answer["after_outcome"] != "pass":
        fields.update(first_failing=answer["after"], last_passing=answer["before"])
    else:
        fields.update(last_failing=answer["before"], first_passing=answer["after"])
    held = answer["hold"]
    fields.update(date=answer["date"], command=answer["command"], cell=answer["cell"],
                  held=", ".join(f"{k}=={v}" if v != "contemporary" else f"{k} contemporary" for k, v in held.items()),
                  probes=answer["probes"] + answer["probes_from_cache"], seconds=round(answer["seconds"]))
    body = ", ".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    return f"bisected = [{{ {body} }}]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cells", nargs="+", metavar="CELL",
                        help="a cell id as `python -m harness list` prints it, e.g. "
                             "'bert_classifier-lora-bias_all-add_adapter[cpu-fp32]'; several cells are bisected over "
                             "the same releases, each probe running them all in one process")
    parser.add_argument("--package", required=True, choices=PACKAGES, help="the package whose releases to bisect")
    parser.add_argument("--good", metavar="VERSION", help="one end (default: the oldest release tox.ini pins)")
    parser.add_argument("--bad", metavar="VERSION", help="the other end (default: the newest release)")
    parser.add_argument("--hold", metavar="PKG==VERSION",
                        help="hold the other package at this release (default: 'contemporary': per candidate, the "
                             "newest release of the other package uploaded before the candidate)")
    parser.add_argument("--reruns", type=int, default=3, metavar="N",
                        help="runs of each side of the edge found, to screen out flakes (default 3)")
    parser.add_argument("--compare", choices=COMPARE_LEVELS, default="signature",
                        help="what must stay the same: status; + stage; + stable exception signature (default); "
                             "+ normalized message")
    parser.add_argument("--read-from", metavar="ARTIFACTS/WRITER",
                        help="across versions, the reader side: each candidate reads this writer's artifacts (a "
                             "write env's folder, e.g. artifacts/peft021-tf523) instead of its own round trip")
    parser.add_argument("--read-by", metavar="peft==V,transformers==V",
                        help="across versions, the writer side: each candidate runs the cell and keeps its "
                             "artifact; this reader release reads it")
    parser.add_argument("--out", metavar="PATH", help="write the answer as JSON")
    parser.add_argument("--timeout", type=float, default=300, metavar="SECONDS", help="time limit per probe cell")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="environments and probe cache (default: $PEFT_COMPAT_CACHE or ~/.cache/peft-compat)")
    parser.add_argument("--no-cache", action="store_true", help="run every probe (results are not stored either)")
    parser.add_argument("--retry-untestable", action="store_true",
                        help="try again to build environments that failed to install or import before")
    parser.add_argument("--uv", metavar="PATH", help="the uv binary (default: on PATH, or next to this python)")
    parser.add_argument("--python", metavar="PYTHON", help="interpreter for the environments (default: this one)")
    parser.add_argument("--root", metavar="DIR", help=argparse.SUPPRESS)  # the checkout (default: this one)


def print_answer(answer: dict, prefix: str = "") -> None:
    print(prefix + summary_line(answer))
    if answer.get("attribution"):
        print(f"{prefix}attribution: {answer['attribution']['how']}")
    for version, counts in answer["flaky"].items():
        print(f"{prefix}flaky: {answer['package']} {version} gave "
              + ", ".join(f"{k} x{n}" for k, n in counts.items()))
    for version, reason in answer["untestable"].items():
        print(f"{prefix}skipped: {answer['package']} {version}: {reason[:300]}")
    snippet = toml_snippet(answer)
    if snippet:
        print(f"{prefix}known_issues.toml: {snippet}")


def cmd_bisect(args) -> int:
    from harness.running.releases import IndexError_

    if args.reruns < 1:
        print("error: --reruns must be at least 1", file=sys.stderr)
        return 2
    try:
        answers = run_bisect(args)
    except (ValueError, LookupError, IndexError_) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for answer in answers:
        print_answer(answer, f"{answer['cell']}: " if len(answers) > 1 else "")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(answers[0] if len(answers) == 1 else {"answers": answers}, fh, indent=1)
    return 0 if all(a["state"] in ("found", "no-change") for a in answers) else 1
