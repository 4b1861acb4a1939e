"""The package's import structure, read from the source with :mod:`ast` (nothing is imported).

Two rules keep dependencies pointing one way (README, Architecture):

1. The module-level imports between eo_jepa modules form no cycle. (Imports under
   ``if TYPE_CHECKING:`` never run and are left out; so is the implicit import of a parent
   package, which every submodule import does.)
2. No function imports eo_jepa code, absolute or relative: an import inside a function is how a
   cycle gets hidden rather than removed. The exceptions are listed below as "module:function"
   (``function`` is the qualified name, ``Class.method`` or ``outer.inner``), each with its reason.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eo_jepa"

# Function-level eo_jepa imports that are there on purpose.
ALLOWED: set[str] = {
    # Lazy CLI sub-command imports: `eo-jepa --help` imports every sub-package's cli.py, and a
    # command imports its implementation (torch, timm, rasterio...) only when it runs, so start-up
    # stays fast (test_cli_start_up_imports_no_heavy_modules below checks it).
    "eo_jepa.models.cli:info_cmd",
    "eo_jepa.chips.cli:build",
    "eo_jepa.chips.cli:info",
    "eo_jepa.train.cli:register.train_cmd",
    "eo_jepa.train.cli:register.publish_cmd",
    "eo_jepa.demo.cli:register.quickstart",
    "eo_jepa.eval.cli:_load",
    "eo_jepa.eval.cli:_probe",
    "eo_jepa.eval.cli:ProbeOptions.__post_init__",
    "eo_jepa.eval.cli:knn_cmd",
    "eo_jepa.eval.cli:linear_cmd",
    "eo_jepa.eval.cli:health_cmd",
    "eo_jepa.eval.cli:dense_cmd",
    "eo_jepa.eval.cli:bench_cmd",
    "eo_jepa.eval.cli:embed_cmd",
    "eo_jepa.eval.cli:pca_cmd",
    "eo_jepa.eval.cli:change_cmd",
    # (eo_jepa/__init__ and the sub-packages' __init__ export their API lazily through
    # eo_jepa.utils.lazy.lazy_exports, which needs no import statement; checked below.)
}


# Modules that must not be imported by `import eo_jepa.cli` (what `eo-jepa --help` runs).
HEAVY = ("torch", "timm", "rasterio", "geopandas", "dask", "zarr")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported(node: ast.Import | ast.ImportFrom, module: str, package: bool, known: set[str]) -> list[str]:
    """The eo_jepa modules an import statement in ``module`` names (``from pkg import sub`` names pkg.sub)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "eo_jepa" or a.name.startswith("eo_jepa.")]
    if node.level:  # relative: resolve against the importing module's package
        parts = module.split(".") if package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, node.module] if node.module else parts)
    else:
        base = node.module or ""
    if base != "eo_jepa" and not base.startswith("eo_jepa."):
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def walk_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, str | None]]:
    """Every import statement with the qualified name of the function it is in (None: module level),
    skipping ``if TYPE_CHECKING:`` blocks."""

    def visit(
        node: ast.AST, scope: list[str], in_function: bool
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, str | None]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                yield from visit(ast.Module(body=child.orelse, type_ignores=[]), scope, in_function)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, ".".join(scope) if in_function else None
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from visit(child, [*scope, child.name], True)
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, [*scope, child.name], in_function)
            else:
                yield from visit(child, scope, in_function)

    yield from visit(tree, [], False)


def import_graph(mods: dict[str, tuple[Path, ast.Module]], *, functions: bool = False) -> dict[str, set[str]]:
    """Module -> the eo_jepa modules it imports at module level (with ``functions``: anywhere)."""
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, tree) in mods.items():
        for node, function in walk_imports(tree):
            if function is None or functions:
                graph[mod].update(t for t in imported(node, mod, is_package(path), known) if t != mod)
    return graph


def function_imports(mods: dict[str, tuple[Path, ast.Module]]) -> dict[str, list[str]]:
    """Map each "module:function" to the eo_jepa modules it imports inside the function."""
    known = set(mods)
    found: dict[str, list[str]] = {}
    for mod, (path, tree) in mods.items():
        for node, function in walk_imports(tree):
            targets = imported(node, mod, is_package(path), known)
            if function is not None and targets:
                found.setdefault(f"{mod}:{function}", []).extend(targets)
    return found


def test_module_level_imports_form_no_cycle():
    graph = import_graph(modules())
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the parser found the package
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail("eo_jepa modules import each other in a cycle: " + " -> ".join(reversed(exc.args[1])))


def test_no_function_level_imports_of_eo_jepa_outside_the_allow_list():
    found = function_imports(modules())
    hidden = {k: v for k, v in found.items() if k not in ALLOWED}
    assert not hidden, (
        "Import these at module level (if that makes a cycle, move code so dependencies point one way), "
        "or add them to ALLOWED with a reason: "
        + "; ".join(f"{k} imports {', '.join(sorted(set(v)))}" for k, v in sorted(hidden.items()))
    )
    stale = sorted(ALLOWED - set(found))
    assert not stale, f"These allow-list entries import no eo_jepa module any more; delete them: {stale}"


# The README's package map, lowest first: a package imports only packages on its own line or above.
PACKAGE_LAYERS = [
    {"eo_jepa._version", "eo_jepa.errors", "eo_jepa.config", "eo_jepa.utils"},
    {"eo_jepa.bands", "eo_jepa.stac"},
    {"eo_jepa.chips"},
    {
        "eo_jepa.models",
        "eo_jepa",
    },  # eo_jepa/__init__ exports models/api.py's load, build_encoder, list_models
    {"eo_jepa.ssl"},
    {"eo_jepa.eval"},
    {"eo_jepa.train"},
    {"eo_jepa.demo"},
    {"eo_jepa.cli", "eo_jepa.__main__"},
]


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_packages_depend_one_way():
    """The package map of the README, counting function-level imports too."""
    rank = {pkg: i for i, layer in enumerate(PACKAGE_LAYERS) for pkg in layer}
    graph = import_graph(modules(), functions=True)
    assert {package_of(m) for m in graph} == set(rank), (
        "a package is missing from PACKAGE_LAYERS (and the README)"
    )
    upward = sorted(
        f"{src} imports {dst}"
        for src, targets in graph.items()
        for dst in targets
        if rank[package_of(dst)] > rank[package_of(src)]
    )
    assert not upward, f"imports against the package map: {upward}"


def test_models_depend_one_way():
    """The order the README gives, architectures -> name table + encoder -> checkpoint/convert/adapt ->
    resolve -> api: no models module imports one above it, not even inside a function."""
    layers = [
        {"eo_jepa.models.vit", "eo_jepa.models.dinov3"},
        {"eo_jepa.models.registry", "eo_jepa.models.encoder"},
        {"eo_jepa.models.checkpoint", "eo_jepa.models.convert", "eo_jepa.models.adapt"},
        {"eo_jepa.models.resolve"},
        {"eo_jepa.models.api"},
    ]
    graph = import_graph(modules(), functions=True)
    for i, layer in enumerate(layers):
        above = set().union(*layers[i + 1 :])
        for mod in layer:
            assert mod in graph, f"{mod} does not exist"
            assert not graph[mod] & above, f"{mod} imports {sorted(graph[mod] & above)}, which sit above it"
    assert {"eo_jepa.models.resolve", "eo_jepa.models.registry"} <= graph["eo_jepa.models.api"]


def test_parser_sees_relative_imports_and_nested_functions():
    """The rules' own reader: relative imports resolve, methods and nested functions are named."""
    tree = ast.parse(
        "from . import grid\nfrom .aois import Aoi\nfrom .. import bands\nimport os\n"
        "class A:\n    def f(self):\n        from ..models import encoder\n"
        "def g():\n    def h():\n        from eo_jepa.chips import crs\n"
        "if TYPE_CHECKING:\n    from eo_jepa.models import api\n"
    )
    known = {
        "eo_jepa.chips.grid",
        "eo_jepa.chips.aois",
        "eo_jepa.bands",
        "eo_jepa.models.encoder",
        "eo_jepa.chips.crs",
    }
    seen = [(imported(n, "eo_jepa.chips.x", False, known), f) for n, f in walk_imports(tree)]
    assert seen == [
        (["eo_jepa.chips.grid"], None),
        (["eo_jepa.chips.aois"], None),
        (["eo_jepa.bands"], None),
        ([], None),
        (["eo_jepa.models.encoder"], "A.f"),
        (["eo_jepa.chips.crs"], "g.h"),
    ]


def top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_lazy_exports_name_what_their_modules_define():
    """The lazy package attributes (``eo_jepa.load``, ``eo_jepa.models.build_encoder``...) are the one
    import path the rules above cannot see: each ``_EXPORTS`` entry names a module that defines it."""
    mods = modules()
    checked = 0
    for mod, (_, tree) in mods.items():
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
                for name, target in ast.literal_eval(node.value).items():
                    assert target in mods, f"{mod}._EXPORTS names a module {target} that does not exist"
                    assert name in top_level_names(mods[target][1]), (
                        f"{mod} exports {name!r} from {target}, which lacks it"
                    )
                    checked += 1
    assert checked > 25


def test_cli_start_up_imports_no_heavy_modules():
    """`eo-jepa --help` and `eo-jepa models list` (the registry is a table without torch) stay quick."""
    code = f"import sys, eo_jepa, eo_jepa.cli, eo_jepa.models.registry; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", (
        f"`eo-jepa --help` imports {out.stdout.strip()}; import them in the command bodies"
    )
