"""A synthetic matrix of the size the page must stay fast for: >= 25 environments x >= 1,000 cells, plus a
cross-version table of every writer x reader pair. Reports are built like real ones (valid against
report.schema.json) and merged by the real merge; the statuses follow version rules, so the page has
regressions, fixes, known issues, not-applicable methods, an environment that failed, and strips to draw."""
from __future__ import annotations

import json
from collections import Counter

from matrix_fixtures import cell, environment

from harness.reporting.report import SCHEMA_VERSION

# 25 (peft, transformers) pairs, oldest first, like tox.ini's
PAIRS = [("0.7.1", "4.36.2"), ("0.8.2", "4.37.2"), ("0.9.0", "4.36.2"), ("0.9.0", "4.38.2"), ("0.10.0", "4.39.3"),
         ("0.10.0", "4.40.2"), ("0.10.0", "4.41.2"), ("0.11.1", "4.41.2"), ("0.12.0", "4.41.2"), ("0.12.0", "4.44.2"),
         ("0.12.0", "4.45.2"), ("0.13.2", "4.45.2"), ("0.14.0", "4.45.2"), ("0.14.0", "4.47.1"), ("0.15.2", "4.51.3"),
         ("0.16.0", "4.53.3"), ("0.17.1", "4.56.2"), ("0.18.1", "4.57.6"), ("0.19.1", "5.8.1"), ("0.20.0", "5.14.1"),
         ("0.21.2", "5.14.1"), ("0.21.2", "4.57.6"), ("0.21.2", "5.23.0"), ("0.21.2", "5.24.0"), ("0.22.0", "5.24.0")]
FAMILIES = ["bert_classifier", "llama_causal", "vit_224", "vit_512", "wav2vec2_ctc", "resnet_classifier"]
METHODS = [("lora", "LoraConfig", 7), ("dora", "LoraConfig", 9), ("loha", "LoHaConfig", 7), ("lokr", "LoKrConfig", 7),
           ("ia3", "IA3Config", 7), ("adalora", "AdaLoraConfig", 7), ("vera", "VeraConfig", 10), ("boft", "BOFTConfig", 11),
           ("oft", "OFTConfig", 7), ("hra", "HRAConfig", 12), ("fourierft", "FourierFTConfig", 11),
           ("ln_tuning", "LNTuningConfig", 11), ("trainable_tokens", "TrainableTokensConfig", 15),
           ("shira", "ShiraConfig", 21)]
SAVES = ["peft_safetensors", "peft_pickle", "merged_full", "transformers_save_pretrained"]
DTYPES = ["fp32", "bf16", "fp16"]
KNOWN = "https://github.com/huggingface/peft/issues/2099"


def env_name(peft: str, tf: str) -> str:
    p, t = peft.split("."), tf.split(".")
    return f"peft{p[0]}{p[1]}-tf{t[0]}{t[1]}"


def _minor(version: str) -> int:
    return int(version.split(".")[1])


def status_of(i_env: int, peft: str, tf: str, family: str, method: str, min_minor: int, save: str, dtype: str):
    """Deterministic version rules (each a story the page must tell)."""
    if _minor(peft) < min_minor:
        return "not-applicable", None
    if method == "adalora" and dtype == "bf16" and _minor(peft) < 9:
        return "expected-failure", "adapt"  # a known issue, fixed in 0.9
    if family == "wav2vec2_ctc" and save == "peft_safetensors" and _minor(peft) >= 12 and method == "lora":
        return "expected-failure", "save"
    if method == "vera" and save == "merged_full" and tf.startswith("5."):
        return "error", "load"  # a new failure with transformers 5
    if method == "boft" and dtype == "fp16" and i_env == len(PAIRS) - 1:
        return "fail", "compare"  # a regression on the newest pair only
    if family == "resnet_classifier" and method == "loha" and save == "peft_pickle" and i_env in (4, 5):
        return "crashed", "load"
    return "pass", None


def reports() -> dict[str, dict]:
    out = {}
    for i_env, (peft, tf) in enumerate(PAIRS):
        name = env_name(peft, tf)
        env = environment(name, peft, tf)
        cells = []
        for family in FAMILIES:
            for method, adapter, min_minor in METHODS:
                for save in SAVES:
                    for dtype in DTYPES:
                        case_id = f"{family}-{method}-{save}"
                        status, stage = status_of(i_env, peft, tf, family, method, min_minor, save, dtype)
                        known = {"reference": KNOWN, "stage": stage} if status == "expected-failure" else None
                        c = cell(case_id, family, adapter, status, env, dtype=dtype, stage=stage, known_issue=known,
                                 max_abs_diff=3e-7 if status == "pass" else (0.4 if status == "fail" else None))
                        c["method"] = method
                        c["save_mode"] = save
                        c["tags"] = ["seed", "s9"] if (method == "adalora" and save == "peft_safetensors") else []
                        if status == "fail":
                            c["missing_keys"] = ["base_model.model.classifier.weight"]
                            c["warnings"] = [{"stage": "load", "category": "UserWarning", "message": "weights not used"}]
                        cells.append(c)
        doc = {"schema_version": SCHEMA_VERSION, "kind": "peft-compat-report", "generated_at": "2026-11-23T08:00:00+00:00",
               "complete": True, "incomplete_reason": None, "environment": env,
               "summary": dict(Counter(c["status"] for c in cells)), "cells": cells}
        out[name] = doc
    return out


def write_reports(folder, *, failed_env: str | None = "peft010-tf441") -> list[str]:
    """Every env's report into folder (the one named failed_env as a stub: it could not be set up)."""
    from harness.reporting.merge import write_stub

    names = []
    for name, doc in reports().items():
        if name == failed_env:
            write_stub(str(folder / f"{name}.json"), name, "no wheel for tokenizers on this python")
        else:
            (folder / f"{name}.json").write_text(json.dumps(doc))
        names.append(name)
    return names


def cross_table(n_cells: int = 40) -> dict:
    """Every writer x reader pair for n_cells cells. Reads of a newer writer by peft < 0.12 fail: at load, on
    a config field the reader does not know (one field per writer release: as varied as the real grid's
    reasons), or silently at compare (max diffs that vary); a few methods do not apply to readers older
    than peft 0.10; one known issue is an expected failure."""
    from harness.reporting.crosstable import KIND, SCHEMA_VERSION as CROSS_VERSION, direction, findings

    envs = [{"name": env_name(p, t), "versions": {"peft": p, "transformers": t, "torch": "2.13.0+cpu",
                                                   "python": "3.11.7"}, "read": True, "report": None}
            for p, t in PAIRS]
    rows, grid = [], {}
    for k in range(n_cells):
        family = FAMILIES[k % len(FAMILIES)]
        cell_id = f"{family}-lora-{SAVES[k % len(SAVES)]}-{k // 12}[cpu-{DTYPES[k % 3]}]"
        entries = []
        for w in envs:
            for r in envs:
                w_minor, r_minor = _minor(w["versions"]["peft"]), _minor(r["versions"]["peft"])
                older_reader = r_minor < 12 <= w_minor
                field = f"field_since_0_{w_minor}"
                status, stage, reason, message, diff, known = "pass", None, None, None, 0.0, None
                if k % 7 == 0 and r_minor < 10:
                    status, reason = "not-applicable", "requires peft>=0.10"
                elif older_reader and k % 3 == 0:
                    status, stage = "error", "load"
                    message = f"LoraConfig.__init__() got an unexpected keyword argument '{field}'"
                    reason, diff = f"TypeError: {message}", None
                elif older_reader and k % 5 == 0:
                    status, stage, diff = "fail", "compare", round(0.1 + (k % 11) * 0.037 + w_minor * 0.001, 6)
                    reason = message = f"the reloaded model does not reproduce the logits: max abs diff {diff:.3g}"
                elif k % 13 == 0 and r_minor >= 20 and w_minor < 10:
                    status, stage, known, diff = "expected-failure", "load", KNOWN, None
                    message, reason = "'base_model.model.classifier.weight'", f"known: {KNOWN}"
                entries.append({"writer": w["name"], "reader": r["name"], "status": status, "stage": stage,
                                "observed_status": "error" if known else None, "max_abs_diff": diff,
                                "exception_type": "builtins.TypeError" if status == "error" else None,
                                "reason": reason, "message": message, "known_issue": known,
                                "writer_status": "pass",
                                "dropped_config_fields": [field] if older_reader else None, "warnings": 0})
                grid.setdefault((w["name"], r["name"]), Counter())[status] += 1
        rows.append({"cell_id": cell_id, "case_id": cell_id.split("[")[0], "family": family, "adapter": "LoraConfig",
                     "entries": entries})
    by_name = {e["name"]: e["versions"] for e in envs}
    table = {"schema_version": CROSS_VERSION, "kind": KIND, "generated_at": "2026-11-23T08:00:00+00:00",
             "environments": envs,
             "grid": [{"writer": w, "reader": r, "direction": direction(by_name[w], by_name[r]),
                       "total": sum(c.values()), "counts": dict(c)} for (w, r), c in grid.items()],
             "cells": rows}
    table["findings"] = findings(table)
    return table
