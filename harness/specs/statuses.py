"""The one vocabulary of verdicts. Every other module takes statuses, and what they mean, from here.

A status has:
- `red`: it makes a run (and `merge --strict`, `diff`) red: something is wrong or unknown;
- `outcome`: what the libraries did, whatever the known-issues table says: "pass" (the round trip held),
  "fail" (it did not: a check failed, a library raised, the process died), "n/a" (it cannot run there), or
  None (nothing was observed). "Since when", `diff` and `--keep-failed` work on outcomes;
- `scope`: "cell" (a record of one run), "matrix" (only in a merged table: no record to show) or
  "cross" (only in a cross-version read: a writer's artifact read by another release);
- a short label, a symbol and a rank for the tables (most urgent first).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Status:
    name: str
    red: bool
    outcome: str | None
    scope: str
    short: str
    symbol: str
    meaning: str


_ALL = (
    Status("fixed", True, "pass", "cell", "fixed", "🔧",
           "a listed known issue that passed: the table is out of date; reported loudly, makes the run red"),
    Status("crashed", True, "fail", "cell", "crashed", "☠️",
           "the cell's process died (segfault, exit, OOM kill); the stage it was in is recorded"),
    Status("timeout", True, "fail", "cell", "timeout", "⏱️", "the cell ran past its time limit and was killed"),
    Status("error", True, "fail", "cell", "error", "💥",
           "a library raised; `stage`, `exception_type` and `message` say where and what"),
    Status("fail", True, "fail", "cell", "fail", "❌",
           "a harness check failed: vacuous adapter, a trained value that cannot be trained or saved, non-adapter "
           "keys reported missing, logits out of tolerance"),
    Status("env-failed", True, None, "matrix", "env-failed", "🚫",
           "the environment could not be set up or did not run (merged table only)"),
    Status("missing", True, None, "matrix", "missing", "∅",
           "the environment ran but its report lacks the cell (merged table only): never read as green"),
    Status("expected-failure", False, "fail", "cell", "xfail", "⚠️",
           "a failure listed in the known-issues table for these versions (with its upstream reference)"),
    Status("base-incompatible", False, None, "cross", "base-incompat", "⛔",
           "cross-version read: the writer's base checkpoint does not load here, or its base logits already "
           "differ; not the adapter's fault"),
    Status("pass", False, "pass", "cell", "pass", "✅",
           "the round trip reproduced the logits within tolerance, and the adapter was not a no-op"),
    Status("not-applicable", False, "n/a", "cell", "n/a", "➖",
           "the case's `requires` exclude these versions, or peft lacks the adapter type"),
    Status("skipped", False, None, "cell", "skip", "⏭️", "cannot run here (no CUDA)"),
)

BY_NAME: dict[str, Status] = {s.name: s for s in _ALL}
RANK: dict[str, int] = {s.name: i for i, s in enumerate(_ALL)}  # display order, most urgent first

# the statuses of an own round trip; a record (report.schema.json) may also be a cross-version read; a merged
# table adds the "matrix" ones
CELL = tuple(s.name for s in _ALL if s.scope == "cell")
RECORD = tuple(s.name for s in _ALL if s.scope in ("cell", "cross"))
MATRIX = tuple(s.name for s in _ALL)
RED = tuple(s.name for s in _ALL if s.red)
# the cell did not run where the status stands: skipped here, or a table's env-failed / missing
NOT_RUN = tuple(s.name for s in _ALL if s.outcome is None and s.scope in ("cell", "matrix"))
MATRIX_ONLY = tuple(s.name for s in _ALL if s.scope == "matrix")
# what pytest reports as skipped: the cell cannot run here (no CUDA) or on these versions
SKIPS = tuple(s.name for s in _ALL if s.scope == "cell" and s.outcome in (None, "n/a"))
FAILED = tuple(s.name for s in _ALL if s.outcome == "fail")  # the libraries did not reproduce the logits
PASSED = tuple(s.name for s in _ALL if s.outcome == "pass")
# what a raw round trip yields before the known-issues table is applied (crashed/timeout come from isolation)
RAW = ("pass", "fail", "error", "skipped", "not-applicable")
# the stages of a round trip, in order; a record's `stage` is the one it failed at (None when it passed)
STAGES = ("build", "adapt", "save", "load", "forward", "compare")
# the raw verdicts that the known-issues table may turn into expected-failure (fail, error) or fixed (pass)
CLASSIFIABLE = ("pass", "fail", "error")
RAW_FAILURES = ("fail", "error")
FROM_TABLE = ("expected-failure", "fixed")  # the verdicts the known-issues table gives


def is_red(status: str) -> bool:
    return BY_NAME[status].red


def outcome(status: str) -> str | None:
    return BY_NAME[status].outcome
