"""Print the requirements of an installed distribution or of a pyproject.toml, minus the packages the base image owns.

NVIDIA's PyTorch container builds its own torch (``2.13.0a0+git...``), Transformer Engine and flash-attention
against it. vLLM and this package pin ``torch==2.13.0``, which pip would "fix" by replacing the container's torch
and breaking Transformer Engine. So the image installs them with ``--no-deps`` and installs the rest of their
requirements from this script's output, under a constraints file that holds the container's own builds in place:

    python docker/pip_requirements.py --dist vllm --exclude torch,torchvision,torchaudio,torchcodec > req.txt
    python docker/pip_requirements.py --pyproject pyproject.toml --extras launch --exclude torch > req.txt
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def filter_requirements(lines: list[str], exclude: set[str], extras: set[str] = frozenset()) -> list[str]:
    """Requirement strings that apply here (markers evaluated with ``extras``), without the ``exclude`` names.

    Markers are evaluated and dropped from the output, so that an extra's requirements come out as plain lines.
    """
    excluded = {canonicalize_name(n) for n in exclude}
    out: list[str] = []
    for line in lines:
        req = Requirement(line)
        if canonicalize_name(req.name) in excluded:
            continue
        if req.marker is not None:
            envs = [dict(default_environment(), extra=e) for e in (sorted(extras) or [""])]
            if not any(req.marker.evaluate(env) for env in envs):
                continue
            req.marker = None
        out.append(str(req))
    return out


def _pyproject_requirements(path: Path, extras: set[str]) -> list[str]:
    import tomllib

    project = tomllib.loads(path.read_text())["project"]
    lines = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in sorted(extras):
        if extra not in optional:
            raise SystemExit(f"{path}: no optional-dependencies group {extra!r} (have {sorted(optional)})")
        lines.extend(optional[extra])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dist", help="an installed distribution (e.g. vllm)")
    source.add_argument("--pyproject", type=Path, help="a pyproject.toml")
    parser.add_argument("--extras", default="", help="comma-separated extras to include")
    parser.add_argument("--exclude", default="", help="comma-separated package names to leave out")
    args = parser.parse_args(argv)
    extras = {e for e in args.extras.split(",") if e}
    exclude = {e for e in args.exclude.split(",") if e}
    if args.dist:
        lines = metadata.requires(args.dist) or []
    else:
        lines = _pyproject_requirements(args.pyproject, extras)
    print("\n".join(filter_requirements(lines, exclude, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
