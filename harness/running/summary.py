"""What a run says at its end, the same from the CLI and from pytest: counts per status, and every known
issue that no longer fails (FIXED), loudly."""
from __future__ import annotations

from collections import Counter

from harness.specs import statuses

# exit codes of every command: 0 green, 1 red (a red status, a regression), 2 bad input (one line, no traceback)
EXIT_OK, EXIT_RED, EXIT_USAGE = 0, 1, 2


def counts(records) -> Counter:
    return Counter(r["status"] for r in records)


def counts_line(counter: Counter) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counter.items(), key=lambda kv: statuses.RANK.get(kv[0], 99)))


def red_count(counter: Counter) -> int:
    return sum(n for s, n in counter.items() if statuses.is_red(s))


def fixed_lines(records) -> list[str]:
    """One line per cell whose known issue passed: the table is out of date."""
    return [f"FIXED (known issue no longer fails): {r['cell_id']}: {r['known_issue']['reference']}"
            for r in sorted(records, key=lambda r: r["cell_id"]) if r["status"] == "fixed"]
