"""Named failure signatures: one name for every wording of the same failure.

torch words one bug differently depending on the CPU, the kernel it dispatches to and its own release: a bf16
input meeting float32 adapter weights reads "expected scalar type BFloat16 but found Float" on one machine and
"expected mat1 and mat2 to have the same dtype, but got: float != c10::BFloat16" or "Input type (float) and bias
type (c10::BFloat16) should be the same" on another. A known-issues entry that names the class
(`signature = "dtype-mismatch"`) holds on every machine; an `exception` regex written on one machine does not.

A signature is matched against the text "ExceptionType: message" (the same text an entry's `exception` regex
sees). `stable_signature(record)` is what `bisect` compares between releases: the class name when one matches,
else the exception's short type name, so that a reworded message alone is not read as a change of behaviour.

Add a wording here (with its test in tests/test_signatures.py) when a new machine, kernel or release shows one.
This module imports nothing from the harness: the specs layer uses it (known_issues.py), the others read it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Signature:
    name: str
    meaning: str
    patterns: tuple  # regexes, any of which matches "ExceptionType: message" (re.search, DOTALL)

    def matches(self, text: str) -> bool:
        return any(re.search(p, text, re.S) for p in self.patterns)


_DT = r"(?:c10::)?(?:BFloat16|Half|Float|Double|float|double|half|bfloat16|Float8\w*)"  # a dtype as torch prints it

_ALL = (
    Signature("dtype-mismatch",
              "two operands of one op have different floating dtypes (typically a bf16/fp16 input or weight meets "
              "a float32 adapter weight); the wording depends on the CPU, the kernel and the torch release",
              (
                  r"expected scalar type \w+ but found \w+",                      # addmm/baddbmm/einsum/layer_norm
                  r"Expected object of scalar type \w+ but got scalar type \w+",  # older torch
                  r"expected m(?:at)?1 and m(?:at)?2 to have the same dtype",     # addmm (mkldnn / generic CPU)
                  r"\b(?:mat1|self|m1) and mat2 must have the same dtype",        # mm / bmm / matmul (meta checks)
                  r"Input type \(.+?\) and (?:weight|bias) type \(.+?\) should be the same",  # conv
                  r"mixed dtype \(CPU\)",                                         # layer/group/batch norm on CPU
                  r"expected both vectors to have same dtype",                    # dot / vdot
                  r"Expected query, key,? and value to have the same dtype",      # scaled_dot_product_attention
                  r"Expected attn_mask dtype to be bool or float or to match query dtype",
                  r"Found dtype \w+ but expected \w+",                            # autograd / loss
                  r"result type \w+ can't be cast to the desired output type \w+",  # in-place ops, out=
                  r"source and destination dtypes match",                         # index_put_ / masked_scatter
                  r"to have the same type as tensor for argument",                # cudnn / older torch
                  rf"(?:input|weight|bias|tensors?)\b[^.\n]{{0,60}}\bsame (?:dtype|type)\b[^.\n]{{0,40}}{_DT}",
                  rf"dtype(?:s)? (?:mismatch|must match)[^.\n]{{0,60}}{_DT}",
              )),
    Signature("shared-tensors",
              "safetensors refuses to save two names for one tensor (a module and its modules_to_save copy share "
              "a parameter); transformers 4.x and 5.x word it differently",
              (r"shared tensors", r"Some tensors share memory")),
    Signature("modules-to-save-attribute",
              "ModulesToSaveWrapper does not forward an attribute that the model reads through it",
              (r"'?ModulesToSaveWrapper'? (?:object )?has no attribute",)),
    Signature("state-dict-key-error",
              "set_peft_model_state_dict looks up a key that the saved adapter does not have",
              (r"\bKeyError: 'base_model\.model\.",)),
    Signature("unknown-config-field",
              "a PEFT config class rejects a field of the saved adapter_config.json that it does not know (a newer "
              "peft wrote it); python words the TypeError differently across releases",
              (r"Config\.__init__\(\) got an unexpected keyword argument",
               r"__init__\(\) got an unexpected keyword argument '\w+'.*Config",
               r"Config\b[^\n]{0,80}unexpected keyword argument")),
    Signature("no-target-modules",
              "the adapter's target modules are not in the model (renamed, or another architecture): peft words it "
              "as a ValueError or NoMatchingPeftModuleError, per method and release",
              (r"Target modules .* not found in the base model", r"No modules were targeted for adaptation",
               r"No layers? types compatible with \w+ were found")),
    Signature("peft-below-transformers-minimum",
              "transformers' PEFT integration (add_adapter, load_adapter, set_adapter...) refuses the installed peft: "
              "it is older than the integration's MIN_PEFT_VERSION",
              (r"The version of PEFT you are using is not compatible, please use a version >=",)),
    Signature("no-past-key-values",
              "prompt learning that injects into the KV cache (prefix tuning) finds no `past_key_values` argument in "
              "the model's forward signature (absent, or renamed by a newer transformers)",
              (r"does not support past key values which are required for prefix tuning",)),
    Signature("unexpected-keyword",
              "a library passes a keyword argument that its callee does not accept (version skew)",
              (r"got an unexpected keyword argument",)),
    # the harness's own checks (exception type CheckFailed / StepError): their wording is ours and stable
    Signature("non-adapter-keys-missing", "the load reported base-model (non-adapter) keys as missing",
              (r"non-adapter key",)),
    Signature("logits-mismatch", "the reloaded model does not reproduce the logits (or their shape)",
              (r"does not reproduce the logits", r"^\w*(?:CheckFailed|StepError): logits shape")),
    Signature("vacuous-adapter", "the adapter does not move the logits: the round trip would prove nothing",
              (r"(?:CheckFailed|StepError): vacuous:", r"has no trainable tensor")),
    Signature("frozen-parameter", "a parameter that training must change is frozen (so it is never saved)",
              (r"none is trainable", r"train_parameter: no parameter matches")),
)

SIGNATURES: dict[str, Signature] = {s.name: s for s in _ALL}
NAMES = tuple(SIGNATURES)


def failure_text(record: dict) -> str:
    """The text that signatures and an entry's `exception` regex are matched against."""
    return f"{record.get('exception_type') or ''}: {record.get('message') or ''}"


def short_type(exception_type: str | None) -> str | None:
    """'builtins.RuntimeError' -> 'RuntimeError'; 'safetensors_rust.SafetensorError' -> 'SafetensorError'."""
    if not exception_type:
        return None
    return exception_type.rsplit(".", 1)[-1]


def signature_of(text: str) -> str | None:
    """The name of the first signature class that matches `text` ("ExceptionType: message"), else None."""
    for sig in _ALL:
        if sig.matches(text):
            return sig.name
    return None


def matches(name: str, text: str) -> bool:
    return SIGNATURES[name].matches(text)


def stable_signature(record: dict) -> str | None:
    """What stays the same when only the wording changes: the signature class, else the short exception type
    (None for a record without a failure)."""
    if record.get("status") == "pass" or not (record.get("exception_type") or record.get("message")):
        return None
    short = short_type(record.get("exception_type"))
    text = f"{short or ''}: {record.get('message') or ''}"
    return signature_of(text) or signature_of(failure_text(record)) or short


def normalized_message(record: dict, limit: int = 120) -> str | None:
    """The first line of the message with numbers, hex addresses and paths blanked: for `bisect --compare
    message`, which also tells two wordings apart."""
    message = record.get("message")
    if not message:
        return None
    line = message.strip().splitlines()[0] if message.strip() else ""
    line = re.sub(r"0x[0-9a-fA-F]+", "0x#", line)
    line = re.sub(r"(/[\w.-]+)+", "/PATH", line)
    line = re.sub(r"\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b", "#", line)  # not the 16 of BFloat16, the 10 of c10
    return line[:limit]
