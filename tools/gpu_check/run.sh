#!/usr/bin/env bash
# The one-call GPU check (issue 21), for the lent GPU machine: run from the repository root with `.whl` carried
# (tools/gpu_check/prepare.sh), inside a 600 s limit:
#     device run: command="bash tools/gpu_check/run.sh", carry=[".whl"], timeout_s=600
# It installs the carried wheels, runs tests/gpu (the FP8 test only where Transformer Engine is installed), then
# bench/gpu_rlad.py (learner + Megatron teacher, RLAD steps, checkpoint round trip, HF export; tokens/s and peak
# memory) with and without teacher.offload, and writes everything under $OUT: gpu_results.md (paste it into
# docs/gpu.md), the JSON reports and the logs. Each part has its own timeout so that one hang leaves the others'
# results.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
start=$(date +%s)
{ nvidia-smi; python3 -c "import torch, megatron.core as m; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'megatron-core', m.__version__)"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
select="tests/gpu"
python3 -c "import transformer_engine.pytorch" >/dev/null 2>&1 || select="tests/gpu --deselect tests/gpu/test_fp8_gpu.py"
timeout 200 python3 -m pytest -q -rs -p no:cacheprovider $select 2>&1 | tee "$OUT/pytest_gpu.log"
echo "pytest rc=${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
timeout 220 python3 bench/gpu_rlad.py ${GPU_CHECK_SMALL:+--small} --out "$OUT" 2>&1 | grep -v -i "warn" | tee "$OUT/bench.log" | tail -5
echo "bench rc=${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
mkdir -p "$OUT/offload"
timeout 120 python3 bench/gpu_rlad.py ${GPU_CHECK_SMALL:+--small} --teacher-offload --steps 2 --out "$OUT/offload" 2>&1 | grep -v -i "warn" \
  | tee "$OUT/bench_offload.log" | tail -3
echo "offload bench rc=${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
python3 tools/gpu_check/report.py "$OUT" > "$OUT/gpu_results.md" && cat "$OUT/gpu_results.md"
