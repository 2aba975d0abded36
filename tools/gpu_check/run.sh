#!/usr/bin/env bash
# The one-call GPU check, for a lent GPU machine (no network): run from the repository root with `.whl` carried
# (tools/gpu_check/prepare.sh), inside a 600 s limit:
#     device run: command="bash tools/gpu_check/run.sh", carry=[".whl"], timeout_s=600
# It installs the carried wheels whose distribution is missing there, then runs its parts, each with its own
# timeout (120 + 90 + 220 + 100 s on a GPU: the whole check stays inside the device call's 600 s; 3x on CPU), each
# skipped with the reason when what it needs is not installed:
#   gpu_tests    tests/gpu (the FP8 tests only where Transformer Engine is installed; vLLM parts skip without vLLM)
#   unit_tests   the CPU tests of the GPU path that run there (TE-less fixes decided by the path megatron-core takes,
#                engine memory / seeds / KV-cache settings, the bench's FLOP arithmetic)
#   bench        bench/gpu_rlad.py: learner + Megatron teacher RLAD steps, HF full-step baseline, checkpoint round
#                trip, HF export; tokens/s, MFU and peak memory (its JSON is written after each of its parts)
#   bench_offload  the same with teacher.offload (GPU only)
# and writes everything under $OUT: parts.txt (one line per part: ok / failed / skipped: why), gpu_results.md (paste
# it into docs/gpu.md), the JSON reports and the logs. Exit code 1 when a part failed.
# On CPU (GPU_CHECK_SMALL=1: tiny models) the same parts run where they can: tests/gpu collects and skips, the unit
# tests and the bench run on the CPU, bench_offload is skipped.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
: > "$OUT/parts.txt"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [[ -z "${PYTHON:-}" ]]; then  # the checkout's own environment where it has one (here), else the machine's python3
  PYTHON=python3
  [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null && PYTHON=.venv/bin/python
fi
export PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  mapfile -t wheels < <("$PYTHON" tools/gpu_check/install_wheels.py .whl)
  "$PYTHON" tools/gpu_check/install_wheels.py .whl --report | tee "$OUT/wheels.txt"
  if (( ${#wheels[@]} )); then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "${wheels[@]}" || { echo "wheel install failed" | tee -a "$OUT/parts.txt"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
  fi
fi
start=$(date +%s)
failed=0

# part NAME TIMEOUT_S "module module ..." COMMAND...: skipped (with the reason) unless every module imports
part() {
  local name=$1 limit=$2 needs=$3
  shift 3
  local missing
  missing=$("$PYTHON" - "$needs" <<'EOF'
import importlib.util, sys
def found(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a dotted name whose parent package is missing
        return False
print(" ".join(m for m in sys.argv[1].split() if not found(m)))
EOF
)
  if [[ -n "$missing" ]]; then
    echo "$name: skipped: not installed here: $missing (no wheel carried: bash tools/gpu_check/prepare.sh --bare)" \
      | tee -a "$OUT/parts.txt"
    return
  fi
  (( cuda )) || limit=$(( limit * 3 ))  # no device limit on CPU, and a slower machine
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -5 "$OUT/$name.log"
  if (( rc == 0 )); then
    echo "$name: ok ($(( $(date +%s) - start )) s since start)" | tee -a "$OUT/parts.txt"
  else
    failed=1
    echo "$name: failed (rc=$rc$( (( rc == 124 )) && echo ", timed out after $limit s"))" | tee -a "$OUT/parts.txt"
  fi
}

{
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "no nvidia-smi here"; fi
  "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0])
print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  "$PYTHON" -c "import megatron.core as m; print('megatron-core', m.__version__)" 2>&1 | tail -1
  for m in transformer_engine apex vllm; do
    "$PYTHON" -c "import $m" >/dev/null 2>&1 && echo "$m: installed" || echo "$m: absent"
  done
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
cuda=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")

select=(tests/gpu)
"$PYTHON" -c "import transformer_engine.pytorch" >/dev/null 2>&1 || select+=(--deselect tests/gpu/test_fp8_gpu.py)
part gpu_tests 120 "pytest megatron.core transformers safetensors" \
  "$PYTHON" -m pytest -q -rs -p no:cacheprovider "${select[@]}"
part unit_tests 90 "pytest megatron.core transformers safetensors yaml" \
  "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/unit/test_foundation.py tests/unit/test_engine_settings.py \
  tests/unit/test_engine_seeds.py tests/unit/test_vllm_memory.py tests/unit/test_bench_gpu_rlad.py \
  tests/unit/test_gpu_check_tools.py
mkdir -p "$OUT/bench" "$OUT/offload"
part bench 220 "megatron.core transformers safetensors psutil" \
  "$PYTHON" bench/gpu_rlad.py ${GPU_CHECK_SMALL:+--small} --out "$OUT/bench"
if [[ "$cuda" == 1 ]]; then
  part bench_offload 100 "megatron.core transformers safetensors psutil" \
    "$PYTHON" bench/gpu_rlad.py ${GPU_CHECK_SMALL:+--small} --teacher-offload --steps 2 --out "$OUT/offload"
else
  echo "bench_offload: skipped: teacher.offload moves the teacher between a GPU and host memory (no CUDA here)" \
    | tee -a "$OUT/parts.txt"
fi
"$PYTHON" tools/gpu_check/report.py "$OUT" > "$OUT/gpu_results.md" && cat "$OUT/gpu_results.md"
verdict=$( ((failed)) && echo "a part failed" || echo "every part ok or skipped")
echo "gpu_check: $verdict after $(( $(date +%s) - start )) s"
exit $failed
