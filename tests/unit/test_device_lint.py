"""No tensor is created off the rank's device and then handed to a collective (rlad_megatron/device.py's rule).

A static check over the package's source, because the CPU suite cannot see the failure: on CPU every device is
the CPU, while on a GPU an NCCL all-reduce of a CPU tensor fails. It flags a torch factory call
(``torch.tensor/zeros/empty/ones/full``) without ``device=`` whose result (directly, through a list of them, or
through a loop over such a list) is the tensor argument of a ``dist.*`` collective in the same function. The
``*_like`` factories inherit their source's device and are not flagged. Tensors made on the CPU on purpose must be
moved with ``device.for_collective`` (or created on ``device.collective_device(group)``) before the collective.
"""
from __future__ import annotations

import ast
from pathlib import Path

import rlad_megatron

FACTORIES = {"tensor", "zeros", "empty", "ones", "full"}
COLLECTIVES = {"all_reduce", "broadcast", "send", "recv", "isend", "irecv", "all_gather", "all_gather_into_tensor",
               "reduce_scatter_tensor", "reduce", "gather", "scatter", "all_to_all_single"}


def _is_factory_without_device(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
            and not any(k.arg == "device" for k in node.keywords))


def _makes_host_tensors(node: ast.AST) -> bool:
    if _is_factory_without_device(node):
        return True
    if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
        return _is_factory_without_device(node.elt)
    if isinstance(node, ast.List):
        return any(_is_factory_without_device(e) for e in node.elts)
    return False


def _is_collective(call: ast.Call) -> bool:
    f = call.func
    if not (isinstance(f, ast.Attribute) and f.attr in COLLECTIVES):
        return False
    owner = f.value
    return (isinstance(owner, ast.Name) and owner.id == "dist") or (
        isinstance(owner, ast.Attribute) and owner.attr == "distributed")


def host_tensors_reaching_collectives(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: name`` for every collective whose tensor argument was made by a device-less factory."""
    problems = []
    tree = ast.parse(source, filename)
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        tainted: set[str] = set()
        nodes = sorted((n for n in ast.walk(func) if hasattr(n, "lineno")), key=lambda n: (n.lineno, n.col_offset))
        for node in nodes:
            if isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                for name in names:
                    (tainted.add if _makes_host_tensors(node.value) else tainted.discard)(name)
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                if isinstance(node.iter, ast.Name) and node.iter.id in tainted:
                    tainted.add(node.target.id)
            elif isinstance(node, ast.Call) and _is_collective(node) and node.args:
                arg = node.args[0]
                if (isinstance(arg, ast.Name) and arg.id in tainted) or _makes_host_tensors(arg):
                    problems.append(f"{filename}:{node.lineno}: {ast.unparse(arg)} -> dist.{node.func.attr}")
    return problems


def test_checker_catches_the_patterns_it_names():
    bad = '''
def a(group):
    finite = torch.tensor(1.0)
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
def b(shapes, src, group):
    out = [torch.empty(s, dtype=d) for s in shapes]
    for t in out:
        dist.recv(t, src=src, group=group)
def c():
    torch.distributed.all_reduce(torch.zeros(2))
'''
    good = '''
def a(group):
    finite = torch.tensor(1.0, device=collective_device(group))
    dist.all_reduce(finite)
def b(x, group):
    t = torch.zeros_like(x)
    dist.broadcast(t, 0, group=group)
def c(group):
    local = torch.tensor([1.0])
    local = for_collective(local, group)
    dist.all_reduce(local, group=group)
'''
    assert [p.split(": ", 1)[1] for p in host_tensors_reaching_collectives(bad)] == [
        "finite -> dist.all_reduce", "t -> dist.recv", "torch.zeros(2) -> dist.all_reduce"]
    assert host_tensors_reaching_collectives(good) == []


def test_package_has_no_host_tensors_in_collectives():
    root = Path(rlad_megatron.__file__).parent
    problems = []
    for path in sorted(root.rglob("*.py")):
        problems += host_tensors_reaching_collectives(path.read_text(), str(path.relative_to(root.parent)))
    assert problems == [], "tensors created without device= reach collectives:\n" + "\n".join(problems)
