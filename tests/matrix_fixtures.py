"""Synthetic per-env reports for the merge / diff / render tests (valid against report.schema.json)."""
from __future__ import annotations

import json

from harness.reporting.report import SCHEMA_VERSION, validate_report

CASES = [
    ("bert_classifier-lora-peft_safetensors", "bert_classifier", "LoraConfig"),
    ("vit_224-lora-posemb_module-peft_safetensors", "vit_224", "LoraConfig"),
    ("wav2vec2_ctc-ia3-peft_safetensors", "wav2vec2_ctc", "IA3Config"),
]


def environment(env_name, peft, transformers):
    return {"python": "3.11.7", "platform": "Linux", "torch": "2.13.0+cpu", "transformers": transformers,
            "peft": peft, "safetensors": "0.8.0", "accelerate": "1.15.0", "device_name": "x86_64",
            "tox_env": env_name}


def cell(case_id, family, adapter, status, env, *, device="cpu", dtype="fp32", stage=None, message=None,
         exception_type=None, known_issue=None, max_abs_diff=None):
    if status in ("fail", "error", "expected-failure") and stage is None:
        stage = "load"
    if status == "fail" and message is None:
        message = "the reloaded model does not reproduce the logits"
        exception_type = "CheckFailed"
    if status in ("error", "expected-failure") and message is None:
        message = "'base_model.model.vit.embeddings.patch_embeddings.projection.weight'"
        exception_type = "builtins.KeyError"
    return {
        "cell_id": f"{case_id}[{device}-{dtype}]", "case_id": case_id, "family": family, "adapter": adapter,
        "method": adapter.removesuffix("Config").lower(), "apply": "get_peft_model", "save_mode": "peft_safetensors",
        "load_mode": "peft_from_pretrained", "tags": [], "references": [], "device": device, "dtype": dtype,
        "status": status, "stage": stage, "exception_type": exception_type, "message": message, "traceback": None,
        "max_abs_diff": max_abs_diff if max_abs_diff is not None else (0.0 if status == "pass" else None),
        "tolerance": 1e-5, "tolerance_reason": None, "adapter_effect": 0.5, "vacuity_threshold": 1e-4,
        "seconds": {"build": 0.1}, "warnings": [], "missing_keys": None, "unexpected_keys": None,
        "non_adapter_keys": None, "known_issue": known_issue, "environment": env,
    }


def report(env_name, peft, transformers, statuses, *, complete=True):
    """statuses: {case_id: status} for the CASES (a case left out is absent from the report)."""
    env = environment(env_name, peft, transformers)
    cells = []
    for case_id, family, adapter in CASES:
        if case_id not in statuses:
            continue
        status = statuses[case_id]
        known = {"reference": "https://github.com/huggingface/peft/issues/2099", "stage": "load"} \
            if status == "expected-failure" else None
        cells.append(cell(case_id, family, adapter, status, env, known_issue=known))
    doc = {"schema_version": SCHEMA_VERSION, "kind": "peft-compat-report", "generated_at": "2026-11-23T08:00:00+00:00",
           "complete": complete, "incomplete_reason": None, "environment": env,
           "summary": {}, "cells": cells}
    validate_report(doc)
    return doc


def write(path, doc):
    path.write_text(json.dumps(doc))
    return str(path)
