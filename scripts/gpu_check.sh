#!/usr/bin/env bash
# One GPU check of the fast TopK training path (issue 7): ~2-3 minutes on an H100, at most
# ~4 (the sum of the parts' timeouts).
# Run from the repo root on the GPU machine; $OUT (default ./gpu_out) receives gpu_log.txt.
#   1. fast step vs a float64 dense reference at a small shape (bench_train.py --check)
#   2. training-step speed at the issue's two shapes: ours (current autograd path, eager fast
#      step, fast step in a CUDA graph) against sparsify, SAELens fp32/bf16, dense bf16
#   3. CUDA tests: tests/test_triton_kernels.py and the cuda cases of tests/test_kernels.py
#   4. a kernel-time profile of the eager fast step at the first shape (what to speed up next)
# Every part runs under its own `timeout`; a failing part does not stop the others.
# The most important numbers (1, 2) come first so a slow part cannot crowd them out.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_log.txt"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
PY=${PY:-python3}
t0=$(date +%s)
part() {  # part NAME SECONDS CMD...: run CMD under a timeout, report rc and elapsed time
    local name=$1 secs=$2 s
    shift 2
    s=$(date +%s)
    echo "=== $name (timeout ${secs}s) ==="
    timeout -k 5 "$secs" "$@"
    echo "=== $name: rc=$? in $(($(date +%s) - s))s (total $(($(date +%s) - t0))s) ==="
}

nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader || true
if ls .whl/*.whl >/dev/null 2>&1; then  # peers (sparsify, SAELens) and their small deps
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || true
fi
if ! $PY -c "import pytest" 2>/dev/null && ls .whl/test/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/test/*.whl || true
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || true

BENCH=(scripts/bench_train.py --device cuda --rounds 2 --steps 10 --no-memory
       --impls saelens_lite-topk saelens_lite-topk-fast saelens_lite-topk-graph
               saelens_lite-batchtopk-graph sparsify saelens saelens-bf16 dense-bf16)

part "check vs float64" 40 $PY scripts/bench_train.py --device cuda --check
part "bench D=768 F=24576 K=32 B=16384" 60 $PY "${BENCH[@]}" --shape 768 24576 32 16384
part "bench D=2304 F=16384 K=64 B=8192" 60 $PY "${BENCH[@]}" --shape 2304 16384 64 8192
part "cuda tests" 60 $PY -m pytest -q --maxfail=5 -p no:cacheprovider \
    tests/test_triton_kernels.py tests/test_kernels.py -k "cuda or triton_kernels"
part "profile eager fast step" 25 $PY - <<'EOF'
import torch
from saelens_lite.saes import SAE, SAEConfig
from saelens_lite.training.fast_step import FastTrainStep

D, F, K, B = 768, 24576, 32, 16384
sae = SAE.from_config(SAEConfig(architecture="topk", d_in=D, d_sae=F, k=K)).cuda()
opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True, capturable=True)
step = FastTrainStep(sae, opt, cuda_graph=False)
x = torch.randn(B, D, device="cuda")
for _ in range(3):
    step(x)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        step(x)
    torch.cuda.synchronize()
ka = prof.key_averages()
key = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
print(ka.table(sort_by=key, row_limit=15, max_name_column_width=60))
EOF
echo "=== summary (tok/s; x peer = our speed / peer's) ==="
grep -E "^shape|impl  |^  (saelens|sparsify|dense|skip|fail)|check fast step|passed|failed|rc=[1-9]" "$LOG" || true
echo "total $(($(date +%s) - t0))s"
