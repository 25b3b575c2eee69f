"""The package's shape: no module imports one that imports it back, and the documented entry
points keep working after the move into subpackages."""

import ast
import os
import subprocess
import sys

from tests.conftest import PROJECT

PACKAGE = PROJECT / "kdad_jax"


def _module_name(path) -> str:
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, modules) -> set:
    """kdad_jax modules ``path`` imports, at any depth of the file (function-level imports too).
    ``from pkg import mod`` counts as importing ``pkg.mod`` (a package's ``__init__`` runs for
    any of its modules; that is not a circle of ours), ``from pkg import name`` as ``pkg``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {m for m in found if m in modules}


def import_graph() -> dict:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, files) - {name} for name, path in files.items()}


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert len(graph) > 50 and "kdad_jax.data.dataset" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def folder_of(module: str) -> str:
    """The folder a module lives in (``training``, ``data``, ...), or the module itself at the
    package root (``kdad_jax.main``)."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return module


def folder_graph(graph: dict) -> dict:
    folders = {}
    for module, imported in graph.items():
        here = folder_of(module)
        folders.setdefault(here, set()).update(folder_of(m) for m in imported if folder_of(m) != here)
    return folders


def test_folder_of_a_module():
    assert folder_of("kdad_jax.training.train") == "training"
    assert folder_of("kdad_jax.data") == "data"
    assert folder_of("kdad_jax.main") == "kdad_jax.main"
    assert folder_graph({"kdad_jax.data.a": {"kdad_jax.data.b", "kdad_jax.errors"},
                         "kdad_jax.data.b": set()}) == {"data": {"kdad_jax.errors"}}


def test_no_folder_imports_one_that_imports_it_back():
    folders = folder_graph(import_graph())
    assert {"training", "evaluation", "jobs", "methods", "data", "report", "serve"} <= set(folders)
    assert _cycle(folders) is None, " -> ".join(_cycle(folders))


def test_the_training_core_imports_neither_reports_nor_jobs():
    folders = folder_graph(import_graph())
    assert not folders["training"] & {"report", "jobs", "serve", "evaluation"}, folders["training"]


def test_the_package_root_holds_six_modules_at_most():
    """main, config helpers, errors, atomic file writes and the two documented aliases."""
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(modules) <= 6, modules


def test_main_is_flags_errors_and_one_call():
    assert import_graph()["kdad_jax.main"] <= {"kdad_jax.errors", "kdad_jax.training.parallel", "kdad_jax.jobs.run",
                                                "kdad_jax.report.describe", "kdad_jax.jobs.predict",
                                                "kdad_jax.report", "kdad_jax.jobs", "kdad_jax.training"}
    assert len((PACKAGE / "main.py").read_text().splitlines()) < 100


def test_documented_entry_points_still_work():
    proc = subprocess.run([sys.executable, "-m", "kdad_jax.convert", "--help"], cwd=PROJECT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--arch" in proc.stdout
    code = ("import kdad_jax.deploy as d, kdad_jax.serve.deploy as s; "
            "assert d.load is s.load and d.Detector is s.Detector")
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT, timeout=120).returncode == 0
    assert os.path.isfile(PACKAGE / "teachers" / "pdn_s_efficientnet_lite0.msgpack")
