"""Named signature classes: every wording seen so far (this machine, other CPUs and kernels, other torch and
transformers releases) maps to its class, and nothing else does. A new wording goes in here first."""
from __future__ import annotations

import pytest

from harness.specs import signatures
from harness.specs.known_issues import classify, parse_known_issues

# (exception type, message) as records carry them; the comment says where it was seen
DTYPE_MISMATCH = [
    ("builtins.RuntimeError", "expected scalar type BFloat16 but found Float"),  # LoHa/LoKr on ResNet, this CPU
    ("builtins.RuntimeError", "expected scalar type Float but found BFloat16"),
    ("builtins.RuntimeError", "expected scalar type Half but found Float"),
    ("builtins.RuntimeError", "expected mat1 and mat2 to have the same dtype, but got: float != c10::BFloat16"),
    ("builtins.RuntimeError", "expected mat1 and mat2 to have the same dtype"),
    ("builtins.RuntimeError", "expected m1 and m2 to have the same dtype, but got: c10::BFloat16 != float"),  # AdaLoRA 0.7
    ("builtins.RuntimeError", "expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16"),  # matrix
    ("builtins.RuntimeError", "Input type (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the same or "
                              "input should be a MKLDNN tensor and weight is a dense tensor"),  # DoRA conv, this CPU
    ("builtins.RuntimeError", "mat1 and mat2 must have the same dtype"),
    ("builtins.RuntimeError", "mat1 and mat2 must have the same dtype, but got BFloat16 and Float"),
    ("builtins.RuntimeError", "self and mat2 must have the same dtype, but got BFloat16 and Float"),
    ("builtins.RuntimeError", "Input type (float) and bias type (c10::BFloat16) should be the same"),  # DoRA conv
    ("builtins.RuntimeError", "Input type (c10::BFloat16) and weight type (float) should be the same"),
    ("builtins.RuntimeError", "Input type (torch.FloatTensor) and weight type (torch.BFloat16Tensor) should be the "
                              "same or input should be a MKLDNN tensor and weight is a dense tensor"),
    ("builtins.RuntimeError", "mixed dtype (CPU): expect parameter to have scalar type of Float"),  # LN tuning
    ("builtins.RuntimeError", "mixed dtype (CPU): expect input to have scalar type of BFloat16"),
    ("builtins.RuntimeError", "mixed dtype (CPU): all inputs must share same datatype."),
    ("builtins.RuntimeError", "expected both vectors to have same dtype, but found Float and BFloat16"),
    ("builtins.RuntimeError", "Expected query, key, and value to have the same dtype, but got query.dtype: "
                              "c10::BFloat16 key.dtype: float and value.dtype: float instead."),
    ("builtins.RuntimeError", "Expected attn_mask dtype to be bool or float or to match query dtype"),
    ("builtins.RuntimeError", "Found dtype Float but expected BFloat16"),
    ("builtins.RuntimeError", "result type Float can't be cast to the desired output type BFloat16"),
    ("builtins.RuntimeError", "Index put requires the source and destination dtypes match, got BFloat16 for the "
                              "destination and Float for the source."),
    ("builtins.RuntimeError", "Expected object of scalar type Float but got scalar type BFloat16 for argument #2 "
                              "'mat2' in call to _th_mm"),
    ("builtins.RuntimeError", "Expected tensor for argument #1 'input' to have the same type as tensor for argument "
                              "#2 'weight'; but type torch.BFloat16Tensor does not equal torch.FloatTensor"),
]

OTHERS = [
    ("shared-tensors", "builtins.RuntimeError",
     "The weights trying to be saved contained shared tensors [{'base_model.model.classifier.bias', "
     "'base_model.model.classifier.modules_to_save.bias'}] which are not properly defined."),  # transformers 5.x
    ("shared-tensors", "builtins.RuntimeError",
     "Some tensors share memory, this will lead to duplicate memory on disk and potential differences when loading "
     "them again: [{'classifier.bias', 'classifier.modules_to_save.default.bias'}]."),  # transformers 4.4x
    ("modules-to-save-attribute", "builtins.AttributeError",
     "'ModulesToSaveWrapper' object has no attribute 'patch_embeddings'"),
    ("state-dict-key-error", "builtins.KeyError",
     "'base_model.model.vit.embeddings.patch_embeddings.projection.weight'"),
    ("unexpected-keyword", "builtins.TypeError",
     "PeftModelForSequenceClassification.add_adapter() got an unexpected keyword argument 'low_cpu_mem_usage'"),
    ("non-adapter-keys-missing", "CheckFailed",
     "the load reported 12 non-adapter key(s) as missing (only adapter keys may be reported): bert.embeddings..."),
    ("logits-mismatch", "CheckFailed",
     "the reloaded model does not reproduce the logits: max abs diff 0.321 > tolerance 1e-05 (cpu, fp32)"),
    ("logits-mismatch", "CheckFailed", "logits shape (2, 5) after loading, (2, 3) before saving"),
    # a config class of an older peft meets a field a newer peft saved (the first unknown one is named)
    ("unknown-config-field", "builtins.TypeError",
     "LoraConfig.__init__() got an unexpected keyword argument 'alora_invocation_tokens'"),
    ("unknown-config-field", "builtins.TypeError", "IA3Config.__init__() got an unexpected keyword argument 'exclude_modules'"),
    ("unknown-config-field", "builtins.TypeError",
     "PrefixTuningConfig.__init__() got an unexpected keyword argument 'init_weights'"),
    ("peft-below-transformers-minimum", "builtins.ValueError",
     "The version of PEFT you are using is not compatible, please use a version >= 0.22.0"),
    ("no-past-key-values", "builtins.ValueError",
     "Model does not support past key values which are required for prefix tuning."),
    # a library passing a keyword its callee lacks is not a config field
    ("unexpected-keyword", "builtins.TypeError",
     "PeftModelForSequenceClassification.add_adapter() got an unexpected keyword argument 'low_cpu_mem_usage'"),
    # target modules missing: peft's wordings per release and method
    ("no-target-modules", "builtins.ValueError",
     "Target modules {'query', 'value'} not found in the base model. Please check the target modules and try again."),
    ("no-target-modules", "peft.utils.error.NoMatchingPeftModuleError",
     "Target modules {'q_proj', 'v_proj'} not found in the base model. Please check the target modules and try again"),
    ("no-target-modules", "builtins.ValueError",
     "No modules were targeted for adaptation. This might be caused by a combination of mismatched target modules"),
    ("no-target-modules", "builtins.ValueError",
     "No layers types compatible with VeRA were found. Please check `peft_config.target_modules`."),
    ("no-target-modules", "builtins.ValueError",  # FRoD's wording (peft 0.20), a ViT adapter across the 5.9 rename
     "No layer types compatible with FRoD were found. Please check `peft_config.target_modules`."),
    ("vacuous-adapter", "CheckFailed", "vacuous: the adapter changes the logits by at most nan, not more than 0.0001"),
    ("frozen-parameter", "StepError",
     "train_parameter: 1 parameter(s) match 'position_embeddings' (vit.embeddings.position_embeddings, ...) but "
     "none is trainable: the adapter config does not let training change them, so they cannot be saved"),
]

NOT_A_DTYPE_MISMATCH = [
    ("builtins.RuntimeError", "Expected all tensors to be on the same device, but found at least two devices"),
    ("builtins.NotImplementedError", ""),
    ("builtins.AttributeError", "'PeftModelForSequenceClassification' object has no attribute 'cls_layer_name'"),
    ("builtins.RuntimeError", "size mismatch for classifier.weight: copying a param with shape torch.Size([3, 32])"),
    ("builtins.ValueError", "PeftModel supports only 1 adapter with bias. When using multiple adapters, set bias "
                            "to 'none' for all adapters."),
]


def _text(exc, msg):
    return signatures.failure_text({"exception_type": exc, "message": msg})


@pytest.mark.parametrize("exc, msg", DTYPE_MISMATCH, ids=[m[:50] for _, m in DTYPE_MISMATCH])
def test_every_dtype_mismatch_wording_is_one_class(exc, msg):
    assert signatures.signature_of(_text(exc, msg)) == "dtype-mismatch"
    assert signatures.stable_signature({"status": "error", "exception_type": exc, "message": msg}) == "dtype-mismatch"


@pytest.mark.parametrize("name, exc, msg", OTHERS, ids=[f"{n}:{m[:30]}" for n, _, m in OTHERS])
def test_other_classes(name, exc, msg):
    assert signatures.signature_of(_text(exc, msg)) == name


@pytest.mark.parametrize("exc, msg", NOT_A_DTYPE_MISMATCH, ids=[m[:40] or e for e, m in NOT_A_DTYPE_MISMATCH])
def test_other_failures_are_not_a_dtype_mismatch(exc, msg):
    assert not signatures.matches("dtype-mismatch", _text(exc, msg))


def test_stable_signature_falls_back_to_the_short_exception_type():
    assert signatures.stable_signature({"status": "error", "exception_type": "builtins.NotImplementedError",
                                        "message": ""}) == "NotImplementedError"
    assert signatures.stable_signature({"status": "pass", "exception_type": None, "message": None}) is None


def test_normalized_message_blanks_numbers_and_paths():
    record = {"message": "max abs diff 0.321 > tolerance 1e-05 at /tmp/x/y.py 0xdeadbeef\nsecond line"}
    assert signatures.normalized_message(record) == "max abs diff # > tolerance # at /PATH 0x#"


def _entry(**fields):
    base = {"cases": ["c-*"], "stage": "adapt", "reference": "https://example.invalid/1"}
    return parse_known_issues({"issue": [{**base, **fields}]})


def _record(msg, exc="builtins.RuntimeError"):
    return {"case_id": "c-1", "device": "cpu", "dtype": "bf16", "status": "error", "stage": "adapt",
            "exception_type": exc, "message": msg, "environment": {"peft": "0.12.0", "transformers": "4.44.2"}}


def test_an_entry_with_a_signature_explains_every_wording():
    issue = _entry(signature="dtype-mismatch")
    for exc, msg in DTYPE_MISMATCH:
        assert classify(_record(msg, exc), issue)["status"] == "expected-failure", msg
    assert classify(_record("Expected all tensors to be on the same device"), issue)["status"] == "error"


def test_signature_or_exception_either_is_enough():
    issue = _entry(signature="dtype-mismatch", exception="cls_layer_name")
    assert classify(_record("expected scalar type BFloat16 but found Float"), issue)["status"] == "expected-failure"
    assert classify(_record("no attribute 'cls_layer_name'"), issue)["status"] == "expected-failure"
    assert classify(_record("something else"), issue)["status"] == "error"


def test_the_shipped_loha_entry_explains_the_cpu_dependent_wording():
    """Issue 10 (2): on this machine bf16 LoHa/LoKr on ResNet fail with 'expected scalar type BFloat16 but found
    Float', which the entry's old regex did not match."""
    from harness.specs.known_issues import load_known_issues

    record = _record("expected scalar type BFloat16 but found Float")
    record["case_id"] = "resnet_classifier-loha"
    record["environment"] = {"peft": "0.12.0", "transformers": "4.44.2"}
    assert classify(record, load_known_issues())["status"] == "expected-failure"
