"""The tree shows the layers, and the imports keep to them: specs -> roundtrip -> (artifacts) -> running, and
specs -> reporting -> running. Checked on the source (every import, also those inside functions), so a
function-level import cannot hide a cycle or a layer that reaches the wrong way."""
from __future__ import annotations

import ast
import re
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "harness"
LAYERS = ("specs", "roundtrip", "artifacts", "reporting", "running")
# what each layer may import from the harness (besides itself), and third-party modules it must not import
MAY_IMPORT = {
    "specs": set(),
    "roundtrip": {"specs"},
    "artifacts": {"specs", "roundtrip"},
    "reporting": {"specs"},
    "running": {"specs", "roundtrip", "artifacts", "reporting"},
}
FORBIDDEN_THIRD_PARTY = {
    "specs": {"torch", "transformers", "peft", "pytest"},
    "roundtrip": {"pytest"},
    "artifacts": {"pytest"},
    "reporting": {"torch", "transformers", "peft", "safetensors", "pytest"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(HARNESS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every module imported anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from harness.x import y` may be a module
    return found


def harness_modules() -> dict[str, Path]:
    return {module_name(p): p for p in HARNESS.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    mods = harness_modules()
    return {name: {m for m in imports(path) if m in mods and m != name} for name, path in mods.items()}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_of_harness_is_in_a_layer():
    loose = [m for m in harness_modules() if m not in ("harness", "harness.__main__") and layer_of(m) is None]
    assert not loose, f"modules outside the layer packages: {loose}"


def test_harness_has_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_keep_to_the_layers():
    wrong = []
    for module, targets in graph().items():
        layer = layer_of(module)
        if layer is None:
            continue
        for target in targets:
            other = layer_of(target)
            if other is None and target != "harness":
                continue
            if target == "harness" or (other != layer and other not in MAY_IMPORT[layer]):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers: " + ", ".join(sorted(wrong))


def test_lower_layers_do_not_import_heavy_or_test_libraries():
    wrong = []
    for module, path in harness_modules().items():
        banned = FORBIDDEN_THIRD_PARTY.get(layer_of(module) or "", set())
        for name in imports(path):
            if name.split(".")[0] in banned:
                wrong.append(f"{module} imports {name}")
    assert not wrong, wrong


STATUS_WORD = re.compile(r"""["'](pass|fail|error|expected-failure|fixed|skipped|not-applicable|crashed|timeout|"""
                         r"""env-failed|missing|base-incompatible)["']""")


def test_statuses_are_defined_once():
    """No module but specs/statuses.py spells out a collection of two or more statuses: every other module takes
    its sets (red, failed, ...) from there."""
    offenders = []
    for module, path in harness_modules().items():
        if module == "harness.specs.statuses":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
                         and STATUS_WORD.fullmatch(repr(e.value))]
                if len(words) >= 2:
                    offenders.append(f"{module}:{node.lineno} {words}")
    assert not offenders, offenders


def test_the_report_schema_lists_exactly_the_cell_statuses():
    import json

    from harness.specs import statuses

    schema = json.loads((HARNESS / "reporting" / "schemas" / "report.schema.json").read_text())
    assert set(schema["$defs"]["status"]["enum"]) == set(statuses.RECORD)
    assert set(schema["$defs"]["stage"]["enum"]) - {None} == set(statuses.STAGES)
