"""Write side of the cross-version table: a finished cell's export (harness.roundtrip.cell.export_for_readers)
and saved artifact become an artifact under the writer's folder:

    <root>/<writer>/bases/<sha256 of the base>/        the base checkpoint as the writer saved it (shared)
    <root>/<writer>/cells/<cell>/saved/                 what the save mode wrote
    <root>/<writer>/cells/<cell>/tensors.safetensors    inputs, base logits, logits before saving
    <root>/<writer>/cells/<cell>/manifest.json          versions, modes, every file with its sha256

Tensors the harness writes itself are safetensors; nothing is pickled (a `peft_pickle` or `torch_state_dict`
save writes what the user's flow writes, and the reader loads it weights-only, as every load here does).
A cell folder appears whole or not at all: it is assembled under a temporary name and renamed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from functools import lru_cache
from importlib import resources

from harness.roundtrip.cell import EXPORT_BASE, EXPORT_DIR, EXPORT_TENSORS

SCHEMA_VERSION = "1.0"
KIND = "peft-compat-artifact"
MANIFEST = "manifest.json"
CELLS, BASES = "cells", "bases"


class ArtifactError(ValueError):
    """An artifact folder that cannot be used; str() names the folder and the reason."""


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    return json.loads(resources.files("harness.artifacts").joinpath("schemas/manifest.schema.json").read_text())


def writer_name(environment: dict) -> str:
    """The writer's name in the table: its tox env without a -write/-read suffix, else "local"."""
    name = environment.get("tox_env") or "local"
    return re.sub(r"-(write|read)$", "", name)


def cell_folder_name(cell_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cell_id).strip("_")


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names)


def _folder_digest(folder: str) -> str:
    digest = hashlib.sha256()
    for rel in _files(folder):
        digest.update(rel.encode() + b"\0" + sha256(os.path.join(folder, rel)).encode() + b"\0")
    return digest.hexdigest()


def _store_base(exported_base: str, writer_dir: str) -> str:
    """The base checkpoint under bases/<digest>/ (written once, whatever number of cells used it)."""
    rel = os.path.join(BASES, _folder_digest(exported_base)[:16])
    dest = os.path.join(writer_dir, rel)
    if not os.path.isdir(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(dest))
        shutil.copytree(exported_base, os.path.join(tmp, "base"))
        try:
            os.replace(os.path.join(tmp, "base"), dest)
        except OSError:  # another writer stored the same base meanwhile: theirs is identical
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    return rel


def _adapter_config_keys(saved: str) -> dict[str, list[str]]:
    keys = {}
    for rel in _files(saved):
        if os.path.basename(rel) == "adapter_config.json":
            with open(os.path.join(saved, rel), encoding="utf-8") as fh:
                keys[rel] = sorted(json.load(fh))
    return keys


def exported(workdir: str) -> bool:
    """Whether the cell in `workdir` got past its save stage with an export for readers."""
    return os.path.isfile(os.path.join(workdir, EXPORT_DIR, EXPORT_TENSORS))


def store(record: dict, workdir: str, root: str) -> str | None:
    """Keep the artifact of a finished cell (its record classified, its folder `workdir` still there) under
    <root>/<writer>/. Returns the cell's artifact folder, or None when the cell never got past its save stage."""
    if not exported(workdir):
        return None
    export = os.path.join(workdir, EXPORT_DIR)
    environment = record["environment"]
    writer_dir = os.path.join(root, writer_name(environment))
    cells_dir = os.path.join(writer_dir, CELLS)
    os.makedirs(cells_dir, exist_ok=True)
    base_rel = _store_base(os.path.join(export, EXPORT_BASE), writer_dir)
    final = os.path.join(cells_dir, cell_folder_name(record["cell_id"]))
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=cells_dir)
    try:
        shutil.copytree(os.path.join(workdir, "artifact"), os.path.join(tmp, "saved"))
        shutil.copy2(os.path.join(export, EXPORT_TENSORS), os.path.join(tmp, EXPORT_TENSORS))
        cell_rel = os.path.relpath(final, writer_dir)
        files = {os.path.join(cell_rel, rel): sha256(os.path.join(tmp, rel)) for rel in _files(tmp)}
        base_dir = os.path.join(writer_dir, base_rel)
        files.update({os.path.join(base_rel, rel): sha256(os.path.join(base_dir, rel)) for rel in _files(base_dir)})
        manifest = {
            "schema_version": SCHEMA_VERSION, "kind": KIND,
            **{k: record.get(k) for k in ("cell_id", "case_id", "family", "adapter", "device", "dtype",
                                          "save_mode", "load_mode")},
            "writer": {"name": writer_name(environment), **environment},
            "writer_verdict": {"status": record["status"], "observed_status": record.get("observed_status"),
                               "stage": record.get("stage"), "max_abs_diff": record.get("max_abs_diff"),
                               "adapter_effect": record.get("adapter_effect"), "tolerance": record["tolerance"]},
            "base": base_rel, "saved": os.path.join(cell_rel, "saved"),
            "tensors": os.path.join(cell_rel, EXPORT_TENSORS), "files": dict(sorted(files.items())),
            "adapter_config_keys": _adapter_config_keys(os.path.join(tmp, "saved")),
        }
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(_finite(manifest), fh, indent=1)
        if os.path.isdir(final):  # a rerun replaces the artifact of the same cell
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _finite(value):
    """JSON has no NaN or inf: such a number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_manifest(cell_dir: str) -> dict:
    """The manifest of a cell folder, validated; ArtifactError names the folder and the reason."""
    import jsonschema

    path = os.path.join(cell_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read the artifact manifest: {exc}") from None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(manifest_schema()).iter_errors(manifest))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ArtifactError(f"{path}: does not match the artifact manifest schema at {where}: {error.message}")
    return manifest


def writers(root: str) -> dict[str, str]:
    """Writer name -> its folder, for every folder under `root` that holds cells."""
    if not os.path.isdir(root):
        raise ArtifactError(f"{root}: no artifacts folder")
    return {name: os.path.join(root, name) for name in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, name, CELLS))}


def cell_dirs(writer_dir: str) -> list[str]:
    cells = os.path.join(writer_dir, CELLS)
    return [os.path.join(cells, n) for n in sorted(os.listdir(cells))
            if not n.startswith(".") and os.path.isfile(os.path.join(cells, n, MANIFEST))]


def verify(writer_dir: str, manifest: dict) -> list[str]:
    """Files of the artifact that are missing or whose sha256 differs from the manifest."""
    bad = []
    for rel, digest in manifest["files"].items():
        path = os.path.join(writer_dir, rel)
        if not os.path.isfile(path):
            bad.append(f"{rel} (missing)")
        elif sha256(path) != digest:
            bad.append(f"{rel} (sha256 differs)")
    return bad
