"""What the speed-ups reuse cannot change: a reused base is what a fresh from_pretrained gives, a base one cell
mutates never reaches the next, a base two loads do not reproduce is never reused, a load's warnings reach
every cell, a cross-version read that reuses its base verdict gives the same record, and a checkpoint written
from per-record texts is the report build_report makes. All with the real libraries."""
from __future__ import annotations

import json
import os

import pytest
import torch

from harness import load_case_file
from harness.roundtrip.cell import base_key, fresh_load_base, load_base
from harness.roundtrip.families import FAMILIES, LOADED_BASES, NO_REUSE_ENV, BaseCheckpoints, LoadedBases
from harness.running.cells import run_cell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _case(name: str):
    from harness.roundtrip.check import load_cases

    return next(c for c in load_cases(os.path.join(ROOT, "cases")) if c.id == name)


def _tensors(model) -> dict:
    out = {f"p:{n}": t for n, t in model.named_parameters(remove_duplicate=False)}
    out.update({f"b:{n}": t for n, t in model.named_buffers(remove_duplicate=False)})
    return out


def _assert_same(a, b) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert list(ta) == list(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name
    assert a.config.to_dict() == b.config.to_dict()


@pytest.fixture
def bases():
    cache = BaseCheckpoints()
    yield cache
    cache.remove()


@pytest.fixture(autouse=True)
def _fresh_cache():
    LOADED_BASES.clear()
    yield
    LOADED_BASES.clear()


def test_a_reused_base_is_a_fresh_load_and_a_mutated_copy_never_reaches_the_next(bases):
    import peft

    case = _case("bert_classifier-lora")
    base_dir = bases.get(FAMILIES[case.family], case.model_config)
    cache = LoadedBases()
    key = base_key(case, base_dir, "cpu", "fp32")

    def load():
        return fresh_load_base(case, base_dir, "cpu", "fp32")

    fresh = load()
    rng_after_fresh = torch.get_rng_state()
    given = []
    for _ in range(3):  # every copy is a fresh load, whatever the copies before it went through
        torch.manual_seed(99)
        model = cache.load(key, load)
        assert torch.equal(torch.get_rng_state(), rng_after_fresh)  # it leaves the random state a load leaves
        _assert_same(model, fresh)
        assert not any("lora" in n for n, _ in model.named_modules())
        # the cell mutates everything it can reach: weights and buffers in place, the config, adapter layers
        with torch.no_grad():
            for tensor in _tensors(model).values():
                tensor.add_(1)
        model.config.num_labels = 7
        peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query"]))
        given.append(model)
    ptrs = [{t.untyped_storage().data_ptr() for t in _tensors(m).values()} for m in given]
    assert not ptrs[0] & ptrs[1] and not ptrs[1] & ptrs[2]
    assert cache.stats == {"admitted": 1, "refused": 0, "copies": 3, "fresh": 0}


def test_a_cell_that_mutates_its_base_does_not_change_the_next_cell(bases, monkeypatch):
    """Cell 1 mutates the base on both sides (adapting in place; a hook nudging the loaded model's base weights),
    cell 2 in the same process reuses the base: it must give the record a fresh load gives."""
    case = _case("bert_classifier-lora")

    def nudge(model):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora" not in name:
                    p.add_(0.5)

    spoiled = run_cell(case, "cpu", "fp32", bases=bases, known_issues=[], after_load=nudge)
    assert spoiled["status"] == "fail" and spoiled["stage"] == "compare"
    reused = run_cell(case, "cpu", "fp32", bases=bases, known_issues=[])
    assert LOADED_BASES.stats["copies"] >= 3 and LOADED_BASES.stats["admitted"] == 1
    monkeypatch.setenv(NO_REUSE_ENV, "1")
    fresh = run_cell(case, "cpu", "fp32", bases=bases, known_issues=[])
    assert reused["status"] == fresh["status"] == "pass"
    for field in ("max_abs_diff", "adapter_effect", "missing_keys", "unexpected_keys"):
        assert reused[field] == fresh[field], field
    key = base_key(case, bases.get(FAMILIES[case.family], case.model_config), "cpu", "fp32")
    _assert_same(LOADED_BASES._entries[key].model, fresh_load_base(*key_args(case, bases)))


def key_args(case, bases):
    return case, bases.get(FAMILIES[case.family], case.model_config), "cpu", "fp32"


def test_a_base_that_two_loads_do_not_reproduce_is_never_reused(bases, tmp_path):
    """A checkpoint without its classifier: unseeded, every from_pretrained initialises it anew. Such a base is
    loaded afresh for every caller, so each sees what the user's own loads give (different weights)."""
    from safetensors.torch import load_file, save_file
    from transformers import BertForSequenceClassification

    case = _case("bert_classifier-lora")
    source = bases.get(FAMILIES[case.family], case.model_config)
    folder = tmp_path / "no-head"
    folder.mkdir()
    (folder / "config.json").write_text(open(os.path.join(source, "config.json")).read())
    tensors = {k: v for k, v in load_file(os.path.join(source, "model.safetensors")).items()
               if not k.startswith("classifier.")}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cache = LoadedBases()
    calls = []

    def load():
        calls.append(1)
        return BertForSequenceClassification.from_pretrained(str(folder))

    a, b = cache.load("k", load), cache.load("k", load)
    assert not torch.equal(a.classifier.weight, b.classifier.weight)
    assert len(calls) == 3 and cache.stats["refused"] == 1 and cache.stats["copies"] == 0
    assert "classifier.weight: values differ" in cache.refused()["k"]


def test_the_warnings_of_a_load_reach_every_cell(bases):
    """A base loaded with mismatched sizes warns at every load: every cell that reuses it records it."""
    case = _case("wav2vec2_ctc-lora-new_vocab-peft_safetensors")
    records = [run_cell(case, "cpu", "fp32", bases=bases, known_issues=[]) for _ in range(2)]
    assert LOADED_BASES.stats["admitted"] == 1
    for record in records:
        assert any("LOAD REPORT" in w["message"] and w["stage"] == "build" for w in record["warnings"]), record


def test_a_read_that_reuses_its_base_verdict_gives_the_record_a_fresh_load_gives(write_case, tmp_path,
                                                                                monkeypatch):
    from harness.artifacts import read as read_module
    from harness.artifacts.read import read_cell
    from harness.artifacts.store import cell_dirs, writers
    from harness.running.isolation import CellRunner

    monkeypatch.setenv("TOX_ENV_NAME", "writer-a")
    cases = [load_case_file(write_case(id=f"bert_classifier-lora-{n}", devices=["cpu"])) for n in ("a", "b")]
    root = tmp_path / "artifacts"
    runner = CellRunner(isolate=False, known_issues=[], artifacts=str(root))
    try:
        for case in cases:
            assert runner.run(case, "cpu", "fp32")["status"] == "pass"
    finally:
        runner.close()
    cells = sorted(cell_dirs(writers(str(root))["writer-a"]))
    LOADED_BASES.clear()
    read_module._BASE_VERDICTS.clear()
    reused = [read_cell(case, cell) for case, cell in zip(cases, cells)]
    assert len(read_module._BASE_VERDICTS) == 1  # one writer's base, one verdict for both reads
    monkeypatch.setenv(NO_REUSE_ENV, "1")
    fresh = [read_cell(case, cell) for case, cell in zip(cases, cells)]
    for r, f in zip(reused, fresh):
        assert r["status"] == f["status"] == "pass"
        for field in ("base_drift", "max_abs_diff", "tolerance", "missing_keys", "unexpected_keys"):
            assert r[field] == f[field], field
        assert [(w["stage"], w["message"]) for w in r["warnings"]] == \
            [(w["stage"], w["message"]) for w in f["warnings"]]


def test_a_checkpoint_is_the_report_build_report_makes(tmp_path):
    from harness.reporting.report import build_report, read_report
    from harness.roundtrip.environment import environment
    from harness.running.checkpoints import ReportCheckpoints

    case = _case("bert_classifier-lora")
    from harness.roundtrip.cell import new_record

    records = []
    for i, dtype in enumerate(("fp32", "bf16", "fp16")):
        record = new_record(case, "cpu", dtype)
        record.update(status=["pass", "fail", "skipped"][i], max_abs_diff=[0.0, float("nan"), None][i])
        records.append(record)
    path = str(tmp_path / "report.json")
    checkpoints = ReportCheckpoints(path, interval_s=0)
    for record in records:
        checkpoints.add(record)  # the first write is validated whole, the later ones joined from record texts
    written = read_report(path)
    expected = json.loads(json.dumps(build_report(list(checkpoints.records.values()), environment=environment("cpu"),
                                                  complete=False, incomplete_reason=written["incomplete_reason"])))
    written.pop("generated_at"), expected.pop("generated_at")
    assert written == expected and len(written["cells"]) == 3


def test_a_reused_template_renders_each_call_and_the_card_a_fresh_compile_writes(bases, tmp_path, monkeypatch):
    """The model card's Jinja2 template is compiled once per process: the same Template comes back for the same
    source, each render still uses its own data, and the README.md that peft's save_pretrained writes is,
    byte for byte, the one a fresh compile writes."""
    import jinja2
    import peft
    from huggingface_hub import ModelCard

    from harness.roundtrip.families import reuse_compiled_templates

    assert reuse_compiled_templates()
    source = open(ModelCard.default_template_path, encoding="utf-8").read()
    assert jinja2.Template(source) is jinja2.Template(source)
    assert jinja2.Template("{{ a }}!").render(a=1) == "1!" and jinja2.Template("{{ a }}!").render(a=2) == "2!"
    case = _case("llama_causal-lora")
    base_dir = bases.get(FAMILIES[case.family], case.model_config)

    def card(target: str, reuse: bool) -> bytes:
        monkeypatch.setenv(NO_REUSE_ENV, "0" if reuse else "1")
        model = FAMILIES[case.family].classes()[1].from_pretrained(base_dir)
        model = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=[target]))
        out = tmp_path / f"{target}-{reuse}"
        model.save_pretrained(str(out))
        return (out / "README.md").read_bytes()

    for target in ("q_proj", "v_proj"):
        reused = card(target, True)
        assert reused == card(target, False) and b"library_name: peft" in reused
    monkeypatch.setenv(NO_REUSE_ENV, "1")
    assert jinja2.Template(source) is not jinja2.Template(source)  # switched off: compiled at every call


def test_the_final_report_is_the_document_write_report_writes(tmp_path):
    """The final write after checkpoints validates only the document around the (already admitted) records,
    and writes, byte for byte, what write_report writes of the same records."""
    from harness.reporting.report import write_report
    from harness.roundtrip.cell import new_record
    from harness.roundtrip.environment import environment
    from harness.running.checkpoints import ReportCheckpoints

    case = _case("bert_classifier-lora")
    path, expected = str(tmp_path / "report.json"), str(tmp_path / "expected.json")
    checkpoints = ReportCheckpoints(path, interval_s=0)
    for dtype, status in (("fp32", "pass"), ("bf16", "fail")):
        checkpoints.add(dict(new_record(case, "cpu", dtype), status=status))
    report = checkpoints.write(complete=True)
    write_report(expected, list(checkpoints.records.values()), environment=environment("cpu"), complete=True)
    with open(path) as fh, open(expected) as fe:
        written, wanted = json.load(fh), json.load(fe)
        written.pop("generated_at"), wanted.pop("generated_at")
        assert written == wanted and report["complete"] is True and len(written["cells"]) == 2
    with open(path) as fh:
        assert fh.read().startswith('{\n "schema_version"')  # indented as write_report writes it


def _atomic(x) -> bool:
    import enum
    import types
    import weakref

    if isinstance(x, (tuple, frozenset)):
        return all(_atomic(y) for y in x)
    return isinstance(x, (type(None), bool, int, float, complex, str, bytes, type, torch.dtype, torch.device,
                          enum.Enum, types.FunctionType, types.BuiltinFunctionType, weakref.ref))


def _same_structure(a, b, seen: set) -> None:
    """`a` and `b` have the same types and attributes everywhere and equal values, and share no object but
    atoms (walked through modules, dicts, lists, tuples, sets and tensors)."""
    if id(a) in seen:
        return
    seen.add(id(a))
    assert type(a) is type(b)
    if _atomic(a):  # what deepcopy itself keeps (numbers, strings, functions, tuples of those, ...)
        assert a is b or a == b or (a != a and b != b)
        return
    assert a is not b, type(a)
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.requires_grad == b.requires_grad
        assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr() or a.numel() == 0
        return
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _same_structure(a[key], b[key], seen)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_structure(x, y, seen)
    elif isinstance(a, (set, frozenset)):
        assert a == b
    elif hasattr(a, "__dict__"):
        _same_structure(vars(a), vars(b), seen)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_copy_model_is_a_deep_copy(bases, family):
    """copy_model (what a reused base is copied with) makes what copy.deepcopy makes: every module, attribute,
    config field and tensor equal, none shared with the base, tied weights still tied; a copy mutated in
    place leaves the base and a second copy alone."""
    import copy

    from harness.roundtrip.families import copy_model, model_difference

    model = FAMILIES[family].classes()[1].from_pretrained(bases.get(FAMILIES[family], {}))
    fast, slow = copy_model(model), copy.deepcopy(model)
    assert model_difference(fast, model) is None and model_difference(fast, slow) is None
    _same_structure(slow, fast, set())  # two copies share nothing, so neither shares anything with the base
    with torch.no_grad():
        for tensor in _tensors(fast).values():
            tensor.add_(1) if tensor.is_floating_point() else tensor.add_(0)
    assert model_difference(copy_model(model), slow) is None


def test_a_base_checkpoint_is_built_once_and_complete_where_two_workers_build_it(tmp_path):
    """Two processes (a worker each) that build the same base at once both end up with one complete folder at
    the same place, made with the umask's mode (it is exported to artifacts as it is)."""
    root = tmp_path / "bases"
    root.mkdir()
    first, second = BaseCheckpoints(str(root)), BaseCheckpoints(str(root))
    family = FAMILIES["llama_causal"]
    path = first.get(family, {})
    mtime = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns
    assert second.get(family, {}) == path  # found complete: not built again
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == mtime
    BaseCheckpoints._build(family, {}, path)  # a second build that loses the race: the first folder stays
    assert sorted(os.listdir(root)) == [os.path.basename(path)]
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == mtime
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~umask
