#!/usr/bin/env bash
# Run HERE (the machine with network), from the repository root, before `run.sh` on the lent GPU machine: fetch the
# wheels the GPU machine lacks into .whl/ (git-ignored; it travels with the device call when `carry` names it).
# The lent H200 has Python 3.12 and torch 2.11 but no megatron-core (docs/environment.md); megatron-core
# needs only torch, numpy and packaging, which are there.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .whl
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "megatron-core==0.16.1"
ls -la .whl
echo "now: device run with carry=['.whl'], timeout_s=600, command='bash tools/gpu_check/run.sh'"
