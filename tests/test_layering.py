"""The layers of the package: imports point one way, and no module imports itself back.

core (numpy/torch/scipy only) <- models <- vllm <- analysis <- report <- study (the run: configuration,
inputs, steps, the results file) <- cli. ``embedded``
(the shipped model and texts) sits beside core; ``vllm`` (the serving layer) imports only core and
models, and is used from above through ``bh_routing.vllm`` only (``bh-routing lm-eval --backend vllm``). Every import counts, also those inside functions and
under ``TYPE_CHECKING``: hiding an import in a function does not remove the dependency.
"""

import ast
import subprocess
import sys
from pathlib import Path

import bh_routing

SRC = Path(bh_routing.__file__).resolve().parent
LAYERS = {"core": 0, "embedded": 0, "models": 1, "vllm": 2, "analysis": 3, "report": 4, "study": 5, "cli": 6}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not all(p.isidentifier() for p in parts) or not (path.parent / "__init__.py").is_file():
            continue  # e.g. lm-eval task helpers: not modules of the package
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement loads (a name imported from a package counts as
    the submodule when there is one, else the package)."""
    if isinstance(node, ast.Import):
        bases = [a.name for a in node.names]
        return [b for b in bases if b.split(".")[0] == "bh_routing"]
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "bh_routing":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(name, is_package, node):
                    # importing a.b.c runs a and a.b first (the importer's own packages are running already)
                    for t in [*_ancestors(target), target]:
                        if t in MODULES and t != name and t not in _ancestors(name):
                            edges.add(t)
        graph[name] = edges
    return graph


GRAPH = _graph()


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None  # the root package: version and a lazy facade


def test_the_graph_sees_the_package():
    assert {"bh_routing.cli", "bh_routing.core.bh", "bh_routing.study.pipeline", "bh_routing.report.base"} <= set(GRAPH)
    assert "bh_routing.study.registry" in GRAPH["bh_routing.study.steps.notebook"]
    assert "bh_routing.core.families" in GRAPH["bh_routing.study.config"]
    assert set(LAYERS) == {n.split(".")[1] for n in GRAPH if n.count(".")}, "a new subpackage needs a layer here"


def test_no_upward_imports():
    bad = [
        f"{a} -> {b}"
        for a, targets in GRAPH.items()
        for b in targets
        if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)
    ]
    assert not bad, "imports that point up the layers:\n" + "\n".join(sorted(bad))


def test_vllm_integration_imports_only_core_and_models():
    """bh_routing.vllm is the serving layer on models: never imported by core or models (the
    layer order), itself built on core and models only (its plugin reads certificates through
    bh_routing.models.certificate), and used from above only through its public package."""
    vllm_modules = [n for n in GRAPH if n.startswith("bh_routing.vllm")]
    assert "bh_routing.vllm.plugin" in vllm_modules
    assert "bh_routing.models.certificate" in GRAPH["bh_routing.vllm.plugin"]
    for name in vllm_modules:
        used = {t.split(".")[1] for t in GRAPH[name] if t.count(".")}
        assert used <= {"core", "models", "vllm"}, (name, used)
    private = [f"{a} -> {b}" for a, targets in GRAPH.items() if not a.startswith("bh_routing.vllm")
               for b in targets if b.startswith("bh_routing.vllm.")]
    assert not private, "imports of the serving layer's modules instead of bh_routing.vllm:\n" + "\n".join(private)


def test_root_package_imports_only_core():
    assert {t.split(".")[1] for t in GRAPH["bh_routing"]} <= {"core"}


def test_no_import_cycles():
    """Tarjan's strongly connected components: any component of more than one module is a cycle."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_can_fail():
    """The checker finds a planted cycle (so that a passing test means something)."""
    global GRAPH
    saved = GRAPH
    GRAPH = {**saved, "bh_routing.core.bh": saved["bh_routing.core.bh"] | {"bh_routing.core.strategies"}}
    try:
        try:
            test_no_import_cycles()
        except AssertionError:
            return
        raise AssertionError("a planted cycle was not found")
    finally:
        GRAPH = saved


def test_core_does_not_import_transformers():
    code = (
        "import sys, torch, bh_routing, bh_routing.core\n"
        "r = bh_routing.BH(0.05).route(torch.randn(4, 8))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'matplotlib')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
