"""Running cells: selection, classification against the known-issues table (once, in cells.py), worker
isolation, checkpointed reports, --keep-failed evidence, reruns; the CLI and the pytest plugin are thin fronts."""
