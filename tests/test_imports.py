"""The project's import graph: no circle (none hidden in a function body or under TYPE_CHECKING), imports
only go down (exaone_kernels <- engine <- server; benchmarks and clients on top), and every module imports."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "exaone_kernels", "server", "clients", "benchmarks")
# What each top-level package must never import.
FORBIDDEN = {
    "exaone_kernels": {"engine", "server", "benchmarks", "clients"},
    "engine": {"server", "benchmarks", "clients"},
    "server": {"benchmarks", "clients"},
}


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the project's packages (a package is its __init__)."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports anywhere in its body, relative imports resolved; for
    `from a import b` both `a` and `a.b` (b may be a submodule)."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + is_package]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports. `import a.b.c` is an edge to a.b.c only: the parent
    packages it also runs are not followed, since a package __init__ runs before any of its modules anyway."""
    files = _module_files()
    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        deps = set()
        for name in _imported_names(module, path):
            # A script's sibling imports (benchmarks/serving.py's `from loadtest.servers import ...`) run
            # with the script's folder on sys.path.
            for target in (name, f"{package}.{name}"):
                if target in files and target != module:
                    deps.add(target)
                    break
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_imports_only_go_down() -> None:
    wrong = [f"{module} imports {dep}" for module, deps in import_graph().items() for dep in sorted(deps)
             if dep.split(".")[0] in FORBIDDEN.get(module.split(".")[0], set())]
    assert not wrong, "\n".join(wrong)


def test_every_engine_and_server_module_imports() -> None:
    # One fresh interpreter, modules in sorted order: a circle that only bites in some order shows here too.
    modules = sorted(m for m in _module_files() if m.split(".")[0] in ("engine", "server"))
    code = f"import importlib\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
