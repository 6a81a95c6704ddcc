"""--keep-failed DIR: keep the evidence of every failing cell, and write a standalone repro.py beside it.

For a cell whose status is one of KEEP_STATUSES, the cell's folder (the saved checkpoint under `artifact/`)
moves to DIR/<cell id>/, with `record.json` (the cell's record) and `repro.py`: a script that uses only
torch, transformers, peft and safetensors (no harness import), rebuilds the tiny base from its config with the
same seed, applies the adapter with the same deterministic fill, runs the same save and load, and raises the
same exception (or fails the same check) -- something a maintainer can paste into an upstream issue.
Everything the script needs is written into it as literals, generated from the case and the running versions.
The script is templates/repro.py.tmpl; the code of the save mode, the load mode, the steps and the family's
inputs comes from their registries (each carries its `repro` snippet next to its implementation).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import string
import textwrap
from importlib import resources

from harness.specs import statuses
from harness.roundtrip import compat
from harness.roundtrip.adapters import FILL_STD, SAVED_LORA, SUBCONFIG_CLASSES, SUBCONFIG_MODULE, adapter_kwargs
from harness.roundtrip.calibration import CALIBRATION_BATCHES, CALIBRATION_SEED, CALIBRATIONS
from harness.roundtrip.cell import LOAD_SEED, SAVE_SEED, TORCH_DTYPES, VACUITY_FACTOR
from harness.roundtrip.families import BASE_SEED, FAMILIES
from harness.roundtrip.modes import BASE_DTYPE_OPTION, LOAD_MODES, SAVE_MODES
from harness.roundtrip.steps import STEPS
from harness.reporting.report import _json_safe

KEEP_STATUSES = statuses.FAILED  # the libraries did not reproduce the logits (expected or not)


def safe_name(cell_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cell_id).strip("_")


def keep_evidence(record: dict, case, keep_dir: str) -> None:
    """Move the cell's folder into keep_dir (failing cells) or remove it (the others); updates the record."""
    source = record.get("artifact_dir")
    if not source:
        return
    if record["status"] not in KEEP_STATUSES:
        shutil.rmtree(source, ignore_errors=True)
        record.pop("artifact_dir", None)
        return
    dest = os.path.join(keep_dir, safe_name(record["cell_id"]))
    os.makedirs(keep_dir, exist_ok=True)
    if os.path.exists(dest):  # a re-run replaces the evidence of the same cell
        shutil.rmtree(dest)
    shutil.move(source, dest)
    tmp = os.path.join(dest, "tmp")
    if os.path.isdir(tmp) and not os.listdir(tmp):
        os.rmdir(tmp)
    record["artifact_dir"] = os.path.abspath(dest)
    with open(os.path.join(dest, "record.json"), "w", encoding="utf-8") as fh:
        json.dump(_json_safe(record), fh, indent=1)
    try:
        text = repro_script(case, record)
    except NotImplementedError as exc:
        with open(os.path.join(dest, "REPRO_NOT_GENERATED.txt"), "w", encoding="utf-8") as fh:
            fh.write(f"no repro.py for this cell: {exc}\n")
        return
    with open(os.path.join(dest, "repro.py"), "w", encoding="utf-8") as fh:
        fh.write(text)


# --- the generated script -------------------------------------------------------------------------------
# The script is templates/repro.py.tmpl (string.Template: ${name} placeholders) filled with literals from the
# case and the record, and with the repro snippets of the registries: each save mode, load mode, step and
# family's inputs carries the user-facing code of what it does (harness.roundtrip.modes, .steps, .families).
# This module only assembles them.

TEMPLATE = "templates/repro.py.tmpl"


def template_text() -> str:
    return resources.files("harness.running").joinpath(TEMPLATE).read_text(encoding="utf-8")


def function_body(snippet: str) -> str:
    """A registry's snippet as the body of a function of the script (4 spaces); `pass` for an empty one."""
    code = textwrap.dedent(snippet).strip("\n")
    return textwrap.indent(code, "    ") if code.strip() else "    pass"


def _doc(text) -> str:
    """Text that goes into the script's docstring verbatim: backslashes doubled, no closing triple quote."""
    return str(text).replace("\\", "\\\\").replace('"""', "'''")


def _steps_code(case) -> tuple[str, str, str]:
    """(the step_<name> functions the case uses, the body of before_adapt, the body of after_adapt)."""
    functions: dict[str, str] = {}
    calls: dict[str, list[str]] = {"before_adapt": [], "after_adapt": []}
    for spec in case.steps:
        step = STEPS.get(spec["name"])
        if step is None:
            raise NotImplementedError(f"unknown step {spec['name']!r}")
        params = {k: v for k, v in spec.items() if k != "name"}
        if step.name not in functions:
            functions[step.name] = (f"\n\ndef step_{step.name}(model, {', '.join(step.params)}):\n"
                                    f"    # {step.description}\n{function_body(step.repro)}\n")
        args = "".join(f", {k}={v!r}" for k, v in params.items())
        calls[step.at].append(f"    step_{step.name}(model{args})")
    return ("".join(functions.values()),
            "\n".join(calls["before_adapt"]) or "    pass", "\n".join(calls["after_adapt"]) or "    pass")


def repro_script(case, record: dict) -> str:
    """The text of a standalone repro.py for the cell of `record` (a case on the running versions)."""
    family = FAMILIES[case.family]
    save_mode, load_mode = SAVE_MODES.get(case.save_mode), LOAD_MODES.get(case.load_mode)
    if save_mode is None or load_mode is None:
        raise NotImplementedError(f"unknown save mode {case.save_mode!r} / load mode {case.load_mode!r}")
    device, dtype = record["device"], record["dtype"]
    save_dev = "cuda" if device in ("cuda", "cuda_to_cpu") else "cpu"
    load_dev = "cuda" if device == "cuda" else "cpu"
    load_options = dict(case.load_options)
    load_dtype = load_options.pop(BASE_DTYPE_OPTION, dtype)  # the loading side's base in another dtype
    env = record.get("environment") or {}
    observed = f"{record.get('exception_type')}: {(record.get('message') or '').strip()}"[:600]
    reference = (record.get("known_issue") or {}).get("reference")
    if reference:
        observed += f"\nKnown upstream issue: {reference}"
    step_functions, before_adapt, after_adapt = _steps_code(case)
    calibration = CALIBRATIONS.get(case.adapter_calibration)
    return string.Template(template_text()).substitute(
        # the docstring
        cell_id=_doc(record["cell_id"]), status_line=_doc(f"{record['status']} at stage {record.get('stage')!r}"),
        observed=_doc(observed), case_file=_doc(record.get("case_file") or case.path),
        versions=_doc(", ".join(f"{p} {env.get(p)}" for p in ("peft", "transformers", "torch", "safetensors",
                                                                 "python"))),
        # names and literals
        config_class=family.config_class, model_class=family.model_class, auto_class=family.auto_class,
        adapter_type=case.adapter_type,
        torch_dtype=TORCH_DTYPES[dtype], save_mode=save_mode.name, load_mode=load_mode.name,
        model_config=repr({**family.tiny_config, **case.model_config}), load_kwargs=repr(dict(case.load_kwargs)),
        dtype_kw=repr(next(iter(compat.dtype_kwargs(None)))), save_dev=repr(save_dev), load_dev=repr(load_dev),
        adapter_kwargs=repr(adapter_kwargs(case)), adapter_apply=repr(case.adapter_apply),
        saved_lora=repr(SAVED_LORA),
        saved_lora_targets=repr(compat.translate_module_names(case.family, family.groups["targets"])),
        forward_kwargs=repr(dict(case.forward_kwargs)),
        subconfig_module=repr(SUBCONFIG_MODULE), subconfig_classes=repr(SUBCONFIG_CLASSES),
        calibration=repr(calibration and calibration.name), calibration_at=repr(calibration and calibration.at),
        calibration_seed=repr(CALIBRATION_SEED), calibration_batches=repr(CALIBRATION_BATCHES),
        calibrate=function_body(calibration.repro if calibration else ""),
        fill=repr(case.adapter_init == "fill"), fill_std=repr(FILL_STD),
        save_options=repr(dict(case.save_options)), load_options=repr(load_options),
        save_needs_initial=repr(save_mode.needs_initial),
        load_torch_dtype=TORCH_DTYPES[load_dtype],
        tolerance=repr(float(record["tolerance"])), vacuity=repr(VACUITY_FACTOR),
        markers=repr(tuple(compat.ADAPTER_KEY_MARKERS)),
        base_seed=repr(BASE_SEED), save_seed=repr(SAVE_SEED), load_seed=repr(LOAD_SEED),
        # the registries' snippets
        family_inputs=function_body(family.make_inputs.repro), step_functions=step_functions,
        before_adapt=before_adapt, after_adapt=after_adapt,
        save=function_body(save_mode.repro), load=function_body(load_mode.repro),
    )
