#!/usr/bin/env bash
# Run HERE (the machine with network), from the repository root, before `run.sh` on the lent GPU machine: fetch the
# wheels the GPU machine lacks into .whl/ (git-ignored; it travels with the device call when `carry` names it).
#   bash tools/gpu_check/prepare.sh          megatron-core only (2.6 MB): the lent H100/H200 image has Python 3.12,
#                                            torch 2.11, transformers, safetensors, tokenizers, pyyaml, psutil and
#                                            pytest, but no megatron-core (docs/gpu.md)
#   bash tools/gpu_check/prepare.sh --bare   also tools/gpu_check/wheels_bare.txt and their dependencies (about
#                                            48 MB), for a GPU machine with only torch
# run.sh installs a carried wheel only where its distribution is missing. The device call carries at most 64 MiB
# with the working tree: this script refuses a .whl/ above WHEEL_LIMIT_MB (default 56).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
rm -rf .whl && mkdir -p .whl
PY=${PYTHON:-.venv/bin/python}
PLATFORMS=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
"$PY" -m pip download -q --no-deps "${PLATFORMS[@]}" -d .whl "megatron-core==0.16.1"
if [[ "${1:-}" == "--bare" ]]; then
  "$PY" -m pip download -q "${PLATFORMS[@]}" -d .whl -r tools/gpu_check/wheels_bare.txt
fi
size_mb=$(( $(du -sk .whl | cut -f1) / 1024 ))
ls -la .whl
echo ".whl: ${size_mb} MB"
if (( size_mb > ${WHEEL_LIMIT_MB:-56} )); then
  echo "error: .whl holds ${size_mb} MB, above ${WHEEL_LIMIT_MB:-56} MB: the device call carries 64 MiB" \
       "with the tree" >&2
  exit 2
fi
echo "now: device run with carry=['.whl'], timeout_s=600, command='bash tools/gpu_check/run.sh'"
