"""Which carried wheels (``.whl/``) to install on the GPU machine: those whose distribution is not installed there
(its own builds stay: torch, and transformers etc. where present). Standard library only: it runs before anything
is installed. Prints one wheel path per line; ``--report`` prints what is kept and what is installed instead."""
from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable


def distribution(wheel: Path) -> str:
    """The normalised distribution name of a wheel file (``Foo_Bar-1.0-py3-none-any.whl`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def missing_wheels(wheel_dir: Path, is_installed: Callable[[str], bool] = installed) -> list[Path]:
    """The wheels of ``wheel_dir`` whose distribution ``is_installed`` says is absent, in name order."""
    return [w for w in sorted(wheel_dir.glob("*.whl")) if not is_installed(distribution(w))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel_dir", type=Path)
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    todo = missing_wheels(args.wheel_dir)
    if args.report:
        kept = sorted({distribution(w) for w in args.wheel_dir.glob("*.whl")} - {distribution(w) for w in todo})
        print(f"carried wheels installed: {[distribution(w) for w in todo]}; already here (kept): {kept}")
    else:
        print("\n".join(str(w) for w in todo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
