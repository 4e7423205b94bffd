"""The package's layers, read from its source with ast: imports go one way, never in a cycle, and never from
inside a function.

Layers, bottom up (a module may import its own layer and those below it):
    0  the compiled artifacts setup.py writes into the package: _C, _C_emulated_cuda, _build_info
    1  fused_ce._core     op loading, registration, fake kernels, autograd and vmap rules, validation, dtypes
    2  fused_ce._lm       the language-model options (logit_scale, softcap, z-loss, in-place backward)
    3  fused_ce._vocab    vocabulary statistics, tiles, the vocabulary-parallel reductions
    4  fused_ce._linear   the fused linear cross-entropy's ops
    5  the public API     the package root, functional, modules, autograd, linear, parallel, testing, check,
                          integrations
Within a layer any import is allowed as long as the modules' import graph has no cycle.
"""

import ast
import pathlib

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "python_pkg" / "fused_ce"
ARTIFACTS = {"fused_ce._C", "fused_ce._C_emulated_cuda", "fused_ce._build_info"}
PRIVATE_LAYERS = ["fused_ce._core", "fused_ce._lm", "fused_ce._vocab", "fused_ce._linear"]
PUBLIC_LAYER = len(PRIVATE_LAYERS) + 1


def layer(module):
    if module in ARTIFACTS:
        return 0
    for rank, package in enumerate(PRIVATE_LAYERS, start=1):
        if module == package or module.startswith(package + "."):
            return rank
    return PUBLIC_LAYER


def modules_of(root):
    """{module name: path} of every .py file under the package folder `root`."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name,) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(module, is_package, node, known):
    """The package's modules an import statement names (relative or absolute)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == module.split(".")[0]]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != module.split(".")[0]:
        return []
    # `from package import name` imports the submodule package.name when there is one
    named = [f"{source}.{alias.name}" for alias in node.names]
    submodules = [name for name in named if name in known or name in ARTIFACTS]
    return submodules + ([source] if len(submodules) < len(named) else [])


def read_imports(root):
    """{module: [(imported module, line)]} and the list of function-local imports as 'module:line'."""
    modules = modules_of(root)
    graph, local = {}, []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        local.append(f"{module}:{inner.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges += [(target, node.lineno) for target in _imported(module, is_package, node, modules)]
        graph[module] = edges
    return graph, sorted(set(local))


def upward_imports(graph):
    return [
        f"{module}:{line} imports {target} (layer {layer(target)} above {layer(module)})"
        for module, edges in graph.items()
        for target, line in edges
        if layer(target) > layer(module)
    ]


def cycles(graph):
    """The import cycles: strongly connected components of more than one module, or a module importing itself
    (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph.get(v, []):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or any(w == v for w, _ in graph.get(v, [])):
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def package_imports():
    return read_imports(PACKAGE_ROOT)


def test_every_layer_exists():
    modules = modules_of(PACKAGE_ROOT)
    for package in PRIVATE_LAYERS:
        assert package in modules, f"{package} is gone: update PRIVATE_LAYERS and this file's docstring"


def test_no_upward_import(package_imports):
    graph, _ = package_imports
    assert upward_imports(graph) == []


def test_no_import_cycle(package_imports):
    graph, _ = package_imports
    assert cycles(graph) == []


def test_no_function_local_import(package_imports):
    _, local = package_imports
    assert local == []


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A small package with one fault of each kind: every check reports its own, and only it."""
    root = tmp_path / "fused_ce"
    _write(
        root,
        {
            "__init__.py": "from . import functional\n",
            "functional.py": "from ._core import a\n",
            "_core/__init__.py": "",
            "_core/a.py": "from . import b\n",
            "_core/b.py": "from .a import thing\n",  # cycle a -> b -> a
            "_core/c.py": "from ..functional import x\n",  # upward: core imports the public API
            "_lm/__init__.py": "",
            "_lm/d.py": "def f():\n    from .._core import a\n",  # function-local
            "_vocab/__init__.py": "",
            "_linear/__init__.py": "",
        },
    )
    graph, local = read_imports(root)
    assert cycles(graph) == [["fused_ce._core.a", "fused_ce._core.b"]]
    assert [u.split(" ")[0] for u in upward_imports(graph)] == ["fused_ce._core.c:1"]
    assert local == ["fused_ce._lm.d:2"]
