"""The rollout-engine protocol (engine_api.py) names every call made on an engine, and both engines implement all
of it (checked on the classes: no engine is started), so no caller looks a method up with ``hasattr``."""
from __future__ import annotations

import ast
from pathlib import Path

import rlad_megatron
from rlad_megatron.engine_api import RolloutEngine
from rlad_megatron.rollout.vllm_engine import VLLMEngine
from rlad_megatron.rollout.vllm_remote import RemoteVLLMEngine

PACKAGE = Path(rlad_megatron.__file__).resolve().parent


def _protocol_members() -> set[str]:
    return {name for name in vars(RolloutEngine) if not name.startswith("_")}


def _instance_attributes(cls) -> set[str]:
    """``self.<name> = ...`` in the class's ``__init__``."""
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
    return {t.attr for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}


def test_both_engines_implement_every_call_of_the_protocol() -> None:
    members = _protocol_members()
    assert {"generate", "score", "weight_version", "config", "kv_cache_tokens", "shards", "runs_apart",
            "request_generate", "collect_generate", "last_generate_s", "sleep", "wake_up", "shutdown"} <= members
    for engine in (VLLMEngine, RemoteVLLMEngine):
        missing = sorted(m for m in members if not hasattr(engine, m) and m not in _instance_attributes(engine))
        assert not missing, f"{engine.__name__} lacks {missing}"
    assert RemoteVLLMEngine.runs_apart.fget(object.__new__(RemoteVLLMEngine)) is True
    assert VLLMEngine.runs_apart.fget(object.__new__(VLLMEngine)) is False


def test_no_caller_looks_up_an_engine_method_by_name() -> None:
    """``hasattr(engine, ...)`` / ``getattr(engine, "...")`` on an engine in the trainer, the evaluator, weight sync
    and the pools."""
    found = []
    for folder in ("trainer", "eval", "weight_sync", "pools", "teacher"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in ("hasattr", "getattr") and node.args
                        and "engine" in ast.unparse(node.args[0])):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found
