"""Which artifacts this environment reads, and in what order: the read phase of the cross-version table.

Writers are ordered by their (peft, transformers) versions, read from their manifests. By default a reader
reads the artifacts of the oldest and the newest writer, of its neighbours in that order (the writers just
older and just newer than itself) and its own (the diagonal: a read of the same release must reproduce what
its own round trip did, which checks the read path itself). `--pairs all` reads every writer (the nightly).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.artifacts.store import ArtifactError, cell_dirs, read_manifest, writer_name, writers
from harness.specs.known_issues import release

PAIRS = ("neighbours", "all")


@dataclass(frozen=True)
class Read:
    writer: str
    case: object
    device: str
    dtype: str
    cell_dir: str
    manifest: dict

    @property
    def key(self) -> str:  # the record key of harness.reporting.report.record_key
        return f"{self.writer}/{self.manifest['cell_id']}"


def _order_key(name: str, versions: dict):
    big = release("9999")
    return (release(versions.get("peft")) or big, release(versions.get("transformers")) or big, name)


def writer_versions(root: str) -> dict[str, dict]:
    """Writer name -> its environment block (from the first of its manifests); writers with no cell left out."""
    out = {}
    for name, folder in writers(root).items():
        cells = cell_dirs(folder)
        if cells:
            out[name] = read_manifest(cells[0])["writer"]
    return out


def choose_writers(versions: dict[str, dict], reader: str, reader_versions: dict, pairs: str) -> list[str]:
    """The writers a reader reads, oldest first."""
    ordered = sorted(versions, key=lambda n: _order_key(n, versions[n]))
    if pairs == "all" or len(ordered) <= 2:
        return ordered
    chosen = {ordered[0], ordered[-1]}
    if reader in versions:
        i = ordered.index(reader)
        chosen |= {reader, ordered[max(i - 1, 0)], ordered[min(i + 1, len(ordered) - 1)]}
    else:  # a reader that wrote nothing: its neighbours by version
        mine = _order_key(reader, reader_versions)
        older = [n for n in ordered if _order_key(n, versions[n]) < mine]
        newer = [n for n in ordered if _order_key(n, versions[n]) > mine]
        chosen |= set(older[-1:]) | set(newer[:1])
    return [n for n in ordered if n in chosen]


def plan_reads(root: str, cases, reader_environment: dict, *, pairs: str = "neighbours", only_writers=None,
               select=None) -> tuple[list[Read], list[str]]:
    """The reads this environment does, and notes about artifacts it leaves out (a case it does not have).
    `select(case, device, dtype) -> bool` narrows the cells (the CLI's -k / --device / --fast)."""
    if pairs not in PAIRS:
        raise ArtifactError(f"--pairs {pairs!r}: one of {', '.join(PAIRS)}")
    versions = writer_versions(root)
    if not versions:
        raise ArtifactError(f"{root}: no writer's artifacts (a folder per writer, each with cells/)")
    if only_writers:
        unknown = sorted(set(only_writers) - set(versions))
        if unknown:
            raise ArtifactError(f"{root}: no artifacts of writer(s) {', '.join(unknown)} "
                                f"(there are: {', '.join(sorted(versions))})")
        names = [n for n in versions if n in only_writers]
    else:
        names = choose_writers(versions, writer_name(reader_environment), reader_environment, pairs)
    by_id = {case.id: case for case in cases}
    reads, notes = [], []
    for name in names:
        for cell_dir in cell_dirs(writers(root)[name]):
            manifest = read_manifest(cell_dir)
            case = by_id.get(manifest["case_id"])
            if case is None:
                notes.append(f"{name}: {manifest['cell_id']}: no case {manifest['case_id']!r} here, not read")
                continue
            if select is not None and not select(case, manifest["device"], manifest["dtype"]):
                continue
            reads.append(Read(name, case, manifest["device"], manifest["dtype"], cell_dir, manifest))
    return reads, notes
