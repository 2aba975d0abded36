"""The package's layering: the library imports neither its examples nor its test helpers, validating a config
imports and probes no hardware module (so it runs on a login node), no import circles, and the parts of every
package stand in floors (imports run one way between them)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rlad_megatron

PACKAGE_DIR = Path(rlad_megatron.__file__).resolve().parent
REPO = PACKAGE_DIR.parent
#: Code the library must never depend on: the examples, the recipes that launch it, its test helpers.
FORBIDDEN = ("examples", "recipes", "rlad_megatron.testing", "tests")
#: The one edge allowed through: ``rlad-megatron launch | plan`` are the repository's launcher (``python -m recipes``),
#: imported by name only when one of those commands runs (tested below to stay out of ``import rlad_megatron.cli``).
EDGES = {"rlad_megatron/launch_cli.py": ["recipes.cli"]}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _core_modules() -> list[Path]:
    """Every module of the package except the test helpers (``rlad_megatron/testing``)."""
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "testing" not in p.relative_to(PACKAGE_DIR).parts[:1])


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth (function-level imports too), and every
    string constant that names a module for ``python -m`` or ``importlib`` (e.g. ``"examples.compare.worker"``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.split(":")[0]
            if text.replace(".", "").replace("_", "").isalnum() and "." in text and " " not in text:
                names.add(text)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_walker_sees_imports_of_every_kind():
    """The check below is only as good as this walker: it must see top-level, function-level, relative imports
    and module names in strings."""
    loop = _imports(PACKAGE_DIR / "trainer" / "loop.py")
    assert {"rlad_megatron.config", "rlad_megatron.trainer.observability.logger"} <= loop  # top level, in a function
    assert "transformers" in _imports(PACKAGE_DIR / "trainer" / "setup" / "components.py")  # in a function
    registry = _imports(PACKAGE_DIR / "tasks" / "registry.py")
    assert "rlad_megatron.tasks.math.task" in registry  # "module:class" strings of import_module
    assert _forbidden("examples.quickstart") and _forbidden("rlad_megatron.testing.tiny_run")
    assert not _forbidden("rlad_megatron.tiny.hf_model") and not _forbidden("examples_of_use")


def test_core_imports_no_examples_recipes_or_test_helpers():
    modules = _core_modules()
    assert len(modules) > 50 and PACKAGE_DIR / "cli.py" in modules
    assert not any("testing" in p.parts for p in modules)
    offenders = {
        str(path.relative_to(REPO)): sorted(n for n in _imports(path) if _forbidden(n)) for path in modules
    }
    offenders = {k: v for k, v in offenders.items() if v and v != EDGES.get(k)}
    assert offenders == {}, f"library modules importing examples / recipes / test helpers: {offenders}"


def test_the_cli_imports_neither_the_launcher_nor_nemo_run():
    """``rlad-megatron`` (its parser, every command listed) loads no recipe and no NeMo-Run: the launcher is
    imported when ``launch`` / ``plan`` runs."""
    script = ("import sys, json; from rlad_megatron.cli import build_parser; build_parser(); "
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('recipes', 'nemo_run'))))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


_VALIDATE_SCRIPT = r"""
import importlib.util, json, sys
import torch

probed = []
def _refuse(name):
    def probe(*args, **kwargs):
        probed.append(name)
        raise AssertionError(f"validation probed {name}")
    return probe
for name in ("is_available", "device_count", "get_device_capability", "get_device_name"):
    setattr(torch.cuda, name, _refuse(f"torch.cuda.{name}"))
real_find_spec = importlib.util.find_spec
def find_spec(name, *args, **kwargs):
    if name.split(".")[0] in ("transformer_engine", "vllm", "megatron"):
        probed.append(f"find_spec({name})")
    return real_find_spec(name, *args, **kwargs)
importlib.util.find_spec = find_spec

from rlad_megatron.config import run_config_from_dict
config = run_config_from_dict({
    "model": {"student": "/s", "teacher": "/t", "params_dtype": "bfloat16"},
    "data": {"train_files": ["/t.jsonl"]},
    "rollout": {"dtype": "bfloat16", "weight_load": "vllm_reload"},
    "fp8": {"enabled": True, "fp8_params": True, "rollout_fp8": True, "recipe": "blockwise"},
})
from recipes import get_recipe
get_recipe("math_qwen3_8b_base").with_overrides(["fp8.enabled=true"]).validate()
loaded = sorted(m for m in sys.modules
                if m.split(".")[0] in ("transformer_engine", "vllm", "megatron") or m == "rlad_megatron.fp8")
print(json.dumps({"probed": probed, "loaded": loaded, "fp8": config.fp8.enabled}))
"""


def test_validating_a_config_imports_and_probes_no_hardware_module():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", _VALIDATE_SCRIPT], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"probed": [], "loaded": [], "fp8": True}


def _package_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at any depth, function-level included), by dotted name. An
    import of a package means its ``__init__``; ``from package import module`` means the module."""
    modules = {_module_name(p) for p in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        name = _module_name(path)
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:  # "pkg.mod.Name" -> "pkg.mod"
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported != "rlad_megatron":
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its nodes in order), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _collapse(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """The graph among the children of ``package`` (each sub-package one node), edges inside a child dropped."""
    prefix = package + "."

    def child(module: str) -> str | None:
        if not module.startswith(prefix):
            return None
        return prefix + module[len(prefix):].split(".")[0]

    out: dict[str, set[str]] = {}
    for source, targets in graph.items():
        a = child(source)
        if a is None:
            continue
        out.setdefault(a, set())
        for target in targets:
            b = child(target)
            if b is not None and b != a:
                out[a].add(b)
    return out


def test_no_import_circles_between_modules() -> None:
    """No module of the package imports itself back through others (at any depth, function-level imports too)."""
    graph = _package_graph()
    faces = {m for m, p in ((m, PACKAGE_DIR.parent / (m.replace(".", "/") + "/__init__.py")) for m in graph)
             if p.exists()}
    # A package's __init__ that re-exports its modules is read through: an import of the package is an import
    # of what it re-exports, not a circle back into the package.
    flat = {m: {t for t in ts if t not in faces} | {u for t in ts if t in faces for u in graph[t]} - {m}
            for m, ts in graph.items() if m not in faces}
    assert _cycle(flat) is None, f"import circle: {' -> '.join(_cycle(flat))}"


@pytest.mark.parametrize("package", ["rlad_megatron", "rlad_megatron.trainer", "rlad_megatron.config",
                                     "rlad_megatron.learner", "rlad_megatron.memory_plan", "rlad_megatron.models"])
def test_packages_and_their_sub_packages_stand_in_floors(package: str) -> None:
    """Between the children of a package (a sub-package counts as one), imports run one way: no arrow runs back
    up from a lower floor (the import graph collapsed to the children is acyclic)."""
    collapsed = _collapse(_package_graph(), package)
    cycle = _cycle(collapsed)
    assert cycle is None, f"imports between the parts of {package} run both ways: {' -> '.join(cycle)}"
