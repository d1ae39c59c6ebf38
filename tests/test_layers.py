"""The package's floor plan holds: each subpackage imports only from the layers below it
(imports inside functions counted, `if TYPE_CHECKING` ones too), no two files import each
other in a cycle, and no quoted model name appears outside `models/` and the presets."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recsys_jax"
# Bottom to top. The face (recsys_jax/__init__.py) and _version sit outside the layers.
LAYERS = ("data", "optim", "models", "objectives", "engine", "eval", "training", "use", "cli")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: dict) -> set[str]:
    """The package's modules that ``path`` imports, resolved to the longest known name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("recsys_jax"):
                found.add(name)
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


GRAPH = {m: imports(p, modules()) - {m} for m, p in modules().items()}


def test_each_layer_imports_only_from_layers_below_it():
    upward = []
    for module, targets in GRAPH.items():
        here = layer(module)
        for target in targets:
            if target == "recsys_jax" and module != "recsys_jax":
                upward.append(f"{module} -> the package face")
            elif here is not None and target != "recsys_jax._version" and (layer(target) or 0) > here:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_files():
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_every_layer_is_a_folder_and_the_top_level_holds_nothing_else():
    top = {p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__"))}
    assert top == {*LAYERS, "__init__.py", "_version.py"}, sorted(top)


def test_no_quoted_model_name_outside_models_and_presets():
    from recsys_jax.models import MODELS

    # "bias" is also the name of the item-bias view and column (inspect, explore) and of a
    # table kind (sparse): those are not the model's name.
    names = "|".join(sorted(n for n in MODELS if n != "bias"))
    pattern = re.compile(rf"""["']({names})["']|model\b.*["']bias["']""")
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("models/") or rel == "training/presets.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
