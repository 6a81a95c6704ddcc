"""Throwaway environments for `bisect`, and one probe = one cell run in one of them.

Environments are built by uv from the one shared uv cache (hard links: no copy of torch per environment) with
the pins tox uses: torch 2.13.0 through constraints.txt (UV_CONSTRAINT and -c), UV_FIND_LINKS (default
/opt/wheels, where the CPU wheel lies), the project's other dependencies unpinned, and the harness itself taken
from the checkout through PYTHONPATH (not installed: one environment serves every checkout). They live under
~/.cache/peft-compat/envs/peft-<v>_transformers-<v>/ and are reused by every later probe and bisection; each
holds a marker (.peft-compat.json) saying whether it installed and imported, and why not.

A probe runs `<env>/bin/python -m harness run -q --isolation worker -k CELL --known-issues <empty table>` in a
subprocess: the raw outcome (status, stage, exception), not the classified one. Probe results are cached in
~/.cache/peft-compat/probes.json per (cell, versions, digest of the case file and the round-trip code), one
entry per run, so a rerun of a bisection costs nothing and a rerun with more --reruns adds only the new runs.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # python < 3.11
    import tomli as tomllib

from harness.running.releases import cache_dir
from harness.specs.signatures import normalized_message, short_type, stable_signature

PINNED_BY_BISECT = ("torch", "peft", "transformers")
TORCH_PIN = "torch==2.13.0"
COMPARE_LEVELS = ("status", "stage", "signature", "message")
_IMPORT_CHECK = ("import json, torch, transformers, peft, safetensors; "
                 "print(json.dumps({'torch': torch.__version__, 'transformers': transformers.__version__, "
                 "'peft': peft.__version__}))")


class Untestable(Exception):
    """This candidate cannot be probed (it does not install, or does not import): reported and skipped."""


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _dependencies(root: Path) -> list[str]:
    """The project's dependencies (pyproject.toml) other than those bisect pins itself."""
    with open(root / "pyproject.toml", "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    out = []
    for dep in deps:
        name = dep.split(";")[0].strip()
        bare = "".join(ch for ch in name if ch.isalnum() or ch in "-_.").lower()
        if bare in PINNED_BY_BISECT or ";" in dep:  # markers (tomli on python < 3.11): not for 3.11 envs
            continue
        out.append(name)
    return out


def pins_text(pins: dict) -> str:
    return ", ".join(f"{p} {v}" for p, v in sorted(pins.items(), reverse=True))


def env_name(pins: dict) -> str:
    return "_".join(f"{p}-{pins[p]}" for p in sorted(pins, reverse=True))  # peft-0.12.0_transformers-4.41.2


@contextlib.contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in (text or "").strip().splitlines()[-lines:] if line.strip())[-700:]


class EnvBuilder:
    def __init__(self, root: Path | None = None, *, cache: str | None = None, uv: str | None = None,
                 python: str | None = None, retry_untestable: bool = False, log=None):
        self.root = Path(root or project_root())
        self.cache = cache or cache_dir()
        self.uv = uv or shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        self.python = python or sys.executable
        self.retry_untestable = retry_untestable
        self.log = log or (lambda message: print(message, file=sys.stderr))

    def path(self, pins: dict) -> str:
        return os.path.join(self.cache, "envs", env_name(pins))

    def _marker(self, env: str) -> dict | None:
        try:
            with open(os.path.join(env, ".peft-compat.json"), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def _mark(self, env: str, **fields) -> None:
        with open(os.path.join(env, ".peft-compat.json"), "w", encoding="utf-8") as fh:
            json.dump({**fields, "date": date.today().isoformat()}, fh)

    def ensure(self, pins: dict) -> str:
        """The environment's python for these pins, building it if needed; Untestable when it cannot be."""
        env = self.path(pins)
        with _locked(env + ".lock"):
            marker = self._marker(env)
            if marker and marker.get("ok"):
                return os.path.join(env, "bin", "python")
            if marker and not marker.get("ok") and not self.retry_untestable:
                raise Untestable(f"{marker.get('reason')} (cached {marker.get('date')}; --retry-untestable "
                                 "tries again)")
            return self._build(env, pins)

    def _run(self, cmd: list[str], env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)

    def _build(self, env: str, pins: dict) -> str:
        started = time.monotonic()
        shutil.rmtree(env, ignore_errors=True)
        constraints = str(self.root / "constraints.txt")
        uv_env = dict(os.environ, UV_CONSTRAINT=constraints)
        links = os.environ.get("UV_FIND_LINKS") or os.environ.get("PIP_FIND_LINKS") or "/opt/wheels"
        if os.path.isdir(links) or "://" in links:
            uv_env["UV_FIND_LINKS"] = links
        uv_env.pop("VIRTUAL_ENV", None)
        proc = self._run([self.uv, "venv", "-q", "--python", self.python, env], env=uv_env)
        if proc.returncode != 0:
            raise RuntimeError(f"uv venv failed for {env}: {_tail(proc.stderr)}")  # the machine, not the candidate
        python = os.path.join(env, "bin", "python")
        requested = [TORCH_PIN] + [f"{p}=={v}" for p, v in sorted(pins.items())] + _dependencies(self.root)
        proc = self._run([self.uv, "pip", "install", "-q", "--python", python, "-c", constraints, *requested],
                         env=uv_env)
        if proc.returncode != 0:
            reason = f"does not install ({pins_text(pins)}): {_tail(proc.stderr)}"
            self._mark(env, ok=False, reason=reason, pins=pins)
            raise Untestable(reason)
        proc = self._run([python, "-c", _IMPORT_CHECK], env=_probe_env(self.root), timeout=600)
        if proc.returncode != 0:
            reason = f"does not import ({pins_text(pins)}): {_tail(proc.stderr, 3)}"
            self._mark(env, ok=False, reason=reason, pins=pins)
            raise Untestable(reason)
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        wrong = [f"{p} {got.get(p)} instead of {v}" for p, v in pins.items() if got.get(p) != v]
        if wrong or not str(got.get("torch", "")).startswith(TORCH_PIN.split("==")[1]):
            reason = f"installs the wrong versions: {', '.join(wrong) or 'torch ' + str(got.get('torch'))}"
            self._mark(env, ok=False, reason=reason, pins=pins)
            raise Untestable(reason)
        self._mark(env, ok=True, versions=got)
        self.log(f"  built {env_name(pins)} in {time.monotonic() - started:.0f} s")
        return python


def _probe_env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "TOX_ENV_NAME")}
    env.update(PYTHONPATH=str(root), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")
    return env


def outcome_of(record: dict) -> dict:
    """A raw record -> the fields bisect compares (and shows)."""
    return {"status": record.get("status"), "stage": record.get("stage"),
            "signature": stable_signature(record), "exception_type": short_type(record.get("exception_type")),
            "normalized_message": normalized_message(record),
            "message": (record.get("message") or "")[:300] or None}


def outcome_key(outcome: dict, compare: str = "signature") -> tuple:
    """What two probes must share to count as the same behaviour, at the chosen level of detail."""
    key = (outcome["status"],)
    if compare in ("stage", "signature", "message"):
        key += (outcome["stage"],)
    if compare in ("signature", "message"):
        key += (outcome["signature"],)
    if compare == "message":
        key += (outcome["normalized_message"],)
    return key


def describe(outcome_or_key) -> str:
    """'pass', 'error at save (shared-tensors)', 'fail at compare (logits-mismatch)'."""
    if isinstance(outcome_or_key, dict):
        parts = (outcome_or_key["status"], outcome_or_key["stage"], outcome_or_key["signature"])
    else:
        parts = tuple(outcome_or_key) + (None,) * (3 - len(outcome_or_key))
    status, stage, sig = parts[:3]
    text = str(status)
    if stage:
        text += f" at {stage}"
    if sig:
        text += f" ({sig})"
    return text


class Prober:
    """prober(pins, cell) -> the outcome of one more run of `cell` on these versions (cached runs first).

    A prober serves a group of cells (bisect CELL CELL ...): a run that the cache cannot answer runs every cell
    of the group in one harness process and caches each result, so cells bisected over the same releases share
    each environment's interpreter start and imports (most of a probe's cost)."""

    def __init__(self, cells: dict, builder: EnvBuilder, *, timeout_s: float = 300, use_cache: bool = True,
                 log=None, cross: "CrossProbe | None" = None):
        self.cells = dict(cells)  # cell id -> case file
        self.builder = builder
        self.cross = cross  # None: the candidate's own round trip; else a read across releases (CrossProbe)
        self.timeout_s = timeout_s
        self.use_cache = use_cache
        self.log = log or builder.log
        self.digests = {cell: _digest(builder.root, path) for cell, path in self.cells.items()}
        self.cache_file = os.path.join(builder.cache, "probes.json")
        self._served: dict[str, int] = {}
        self._memory: dict[str, list] = {}  # --no-cache: runs of this bisection only
        self.ran = Counter()         # per cell: its runs that a harness process executed
        self.from_cache = Counter()  # per cell: its runs answered from the cache
        self.processes = 0           # harness processes started
        self.history: list[dict] = []

    def key(self, pins: dict, cell: str) -> str:
        key = f"{cell}|{env_name(pins)}|torch-2.13.0|{self.digests[cell]}"
        return key if self.cross is None else f"{key}|{self.cross.key(cell)}"

    def _cached_runs(self, key: str) -> list[dict]:
        if not self.use_cache:
            return self._memory.get(key, [])
        try:
            with open(self.cache_file, encoding="utf-8") as fh:
                return json.load(fh).get("probes", {}).get(key, [])
        except (OSError, ValueError):
            return []

    def _store(self, key: str, run: dict) -> None:
        if not self.use_cache:
            self._memory.setdefault(key, []).append(run)
            return
        with _locked(self.cache_file + ".lock"):
            try:
                with open(self.cache_file, encoding="utf-8") as fh:
                    data = json.load(fh)
            except (OSError, ValueError):
                data = {"format": 1, "probes": {}}
            data.setdefault("probes", {}).setdefault(key, []).append(run)
            tmp = f"{self.cache_file}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=0)
            os.replace(tmp, self.cache_file)

    def __call__(self, pins: dict, cell: str | None = None) -> dict:
        cell = cell or next(iter(self.cells))
        key = self.key(pins, cell)
        index = self._served.get(key, 0)
        cached = self._cached_runs(key)
        if index < len(cached):
            run, source = cached[index], "cache"
            self.from_cache[cell] += 1
        else:
            python = self.builder.ensure(pins)  # Untestable propagates: nothing is cached for the cells
            self.processes += 1
            runs = self._run(python, pins)
            for other, other_run in runs.items():
                self._store(self.key(pins, other), other_run)
            run, source = runs[cell], "ran"
            self.ran[cell] += 1
            if len(self.cells) > 1:  # the other cells' runs wait in the cache for their own searches
                self.log(f"  ({len(runs) - 1} more cell(s) of the group ran in the same process)")
        self._served[key] = index + 1
        self.history.append({"cell": cell, "versions": dict(pins), "source": source, **run})
        self.log(f"  {pins_text(pins)}: {describe(run['outcome'])}"
                 + (f" [{run['seconds']:.0f} s]" if source == "ran" else " [cached]")
                 + (f" {cell}" if len(self.cells) > 1 else ""))
        return run["outcome"]

    def _harness(self, python: str, tmp: str, verb: list, out: str, env: dict | None = None) -> dict:
        """`python -m harness VERB ... -k CELL...` with no known issue applied: its report."""
        empty = os.path.join(tmp, "no-known-issues.toml")
        Path(empty).write_text("# bisect compares raw outcomes: no known issue applies\n")
        cmd = [python, "-m", "harness", *verb, "-q", "--isolation", "worker",
               "--cases", str(self.builder.root / "cases"), "--out", out,
               "--known-issues", empty, "--timeout", f"{self.timeout_s:g}"]
        for cell in self.cells:
            cmd += ["-k", cell]
        limit = self.timeout_s * len(self.cells) + 600
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=limit,
                                  env={**_probe_env(self.builder.root), **(env or {})})
        except subprocess.TimeoutExpired:
            raise Untestable(f"the probe process did not finish within {limit:.0f} s") from None
        try:
            with open(out, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            raise Untestable(f"the harness did not {verb[0]} in this environment (exit {proc.returncode}): "
                             f"{_tail(proc.stderr, 4)}") from None

    def _run(self, python: str, pins: dict) -> dict:
        """Every cell of the group, once, in one harness process: {cell: run}."""
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="peft-compat-probe-") as tmp:
            out = os.path.join(tmp, "probe.json")
            if self.cross is None:
                report = self._harness(python, tmp, ["run"], out)
            elif self.cross.reader_pins is None:  # the candidate reads the fixed writer's artifacts
                report = self._harness(python, tmp, ["read", self.cross.artifacts, "--writer", self.cross.writer],
                                       out)
            else:  # the candidate writes; the fixed reader release reads what it wrote
                artifacts = os.path.join(tmp, "artifacts")
                self._harness(python, tmp, ["run", "--artifacts", artifacts], os.path.join(tmp, "write.json"),
                              env={"TOX_ENV_NAME": CrossProbe.PROBE_WRITER})
                reader = self.builder.ensure(self.cross.reader_pins)
                written = set(os.listdir(os.path.join(artifacts, CrossProbe.PROBE_WRITER, "cells"))) \
                    if os.path.isdir(os.path.join(artifacts, CrossProbe.PROBE_WRITER, "cells")) else set()
                if not written:
                    raise Untestable("the candidate saved no artifact for these cells (its own round trip stopped "
                                     "before its save stage): nothing for the reader to read")
                report = self._harness(reader, tmp, ["read", artifacts, "--writer", CrossProbe.PROBE_WRITER], out)
        seconds = round(time.monotonic() - started, 1)
        by_id = {r.get("cell_id"): r for r in report.get("cells", [])}
        runs = {}
        for cell in self.cells:
            if cell not in by_id:
                if self.cross is not None:
                    raise Untestable(f"no read of {cell} came out of this probe (the writer kept no artifact of "
                                     "it, or its case does not apply to this reader)")
                raise LookupError(f"the probe's report has no cell {cell!r} (cases changed?)")
            record = by_id[cell]
            runs[cell] = {"outcome": outcome_of(record), "seconds": seconds,
                          "environment": {k: record.get("environment", {}).get(k) for k in
                                          ("peft", "transformers", "torch", "safetensors", "accelerate",
                                           "device_name")},
                          "date": date.today().isoformat()}
        return runs


class CrossProbe:
    """A probe across releases: either every candidate reads one writer's artifacts (`artifacts`/`writer`, the
    reader side of an edge) or every candidate writes and one fixed release reads (`reader_pins`, the writer
    side). The probe's outcome is the read's raw record."""
    PROBE_WRITER = "bisect-writer"

    def __init__(self, *, artifacts: str | None = None, writer: str | None = None, reader_pins: dict | None = None):
        self.artifacts, self.writer, self.reader_pins = artifacts, writer, reader_pins

    @classmethod
    def reading(cls, writer_dir: str) -> "CrossProbe":
        """Candidates read the artifacts in `writer_dir` (an artifacts folder's <writer> sub-folder)."""
        writer_dir = os.path.abspath(writer_dir.rstrip("/"))
        if not os.path.isdir(os.path.join(writer_dir, "cells")):
            raise ValueError(f"--read-from {writer_dir}: not a writer's artifacts folder (no cells/ in it; give "
                             "ARTIFACTS/<writer>, e.g. artifacts/peft021-tf523)")
        return cls(artifacts=os.path.dirname(writer_dir), writer=os.path.basename(writer_dir))

    def key(self, cell: str) -> str:
        if self.reader_pins is not None:
            return f"read-by:{env_name(self.reader_pins)}"
        manifest = os.path.join(self.artifacts, self.writer, "cells", cell_folder(cell), "manifest.json")
        try:
            digest = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()[:12]
        except OSError:
            digest = "none"
        return f"read-from:{self.writer}:{digest}"


def cell_folder(cell_id: str) -> str:
    from harness.artifacts.store import cell_folder_name  # the artifacts layer names the folders

    return cell_folder_name(cell_id)


def _digest(root: Path, case_path: str) -> str:
    """What a probe's result depends on besides the versions: the case file and the round-trip code."""
    h = hashlib.sha256()
    files = [Path(case_path)] + sorted((root / "harness" / "roundtrip").glob("*.py"))
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]
