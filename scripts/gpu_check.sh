#!/usr/bin/env bash
# One GPU check of the fast TopK training path (issue 7): ~6 minutes on an H100, at most ~9.7
# (the sum of the parts' timeouts). Run from the repo root on the GPU machine; $OUT (default
# ./gpu_out) receives gpu_log.txt. The most important numbers come first so a slow part cannot
# crowd them out; every part runs under its own `timeout`, a failing part does not stop others.
#   1. fast step vs a float64 dense reference at a small shape, and the fused matmul + top-k
#      kernel vs cuBLAS + torch.topk at the first shape (bench_train.py --check)
#   2. step speed at both shapes: the graph step with the fused top-k (topk-graph) vs the
#      unfused one (-torchsel) and the pruned fused one (-pruned; BatchTopK too), with 10% dead latents (AuxK over the bounded candidate set,
#      -aux) vs over all latents unfused (-aux-full, the previous behaviour), and the peers
#      and the dense-GEMM backward (-dense; sparse gathers may lose at D=2304, K/F=1/256)
#   2b. a kernel profile of the eager fast step at both shapes (fused, pruned, dense backward)
#   3. each Triton kernel alone over its launch settings (scripts/bench_kernels.py): the
#      fused top-k's tiles and pruned KT', the segment reduction's blocks, warps, prefetch
#   4. end-to-end train() tokens/s, fast_step=auto (CUDA graph) vs off (autograd) vs the
#      pruned selection (topk_select=pruned), same data,
#      at the issue's two shapes, before and after the dead window (AuxK), plus auto with the
#      data in host memory (the host gather + copy bound)
#   5. the host's data path: shuffled bf16 cache batches per second (scripts/bench_data.py)
#   6. CUDA tests: triton kernels, the cuda cases of test_kernels, train() with the fast step
#   7. harvest of tiny-llama on CUDA: the overlapped writer vs the plain loop
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

BENCH=(scripts/bench_train.py --device cuda --rounds 2 --steps 10 --no-memory)
OURS=(saelens_lite-topk-graph saelens_lite-topk-graph-torchsel saelens_lite-topk-graph-pruned
      saelens_lite-topk-graph-aux saelens_lite-topk-graph-aux-full saelens_lite-batchtopk-graph
      saelens_lite-batchtopk-graph-pruned saelens_lite-topk-graph-dense
      saelens_lite-batchtopk-graph-dense)

part "check vs float64" 40 $PY scripts/bench_train.py --device cuda --check
part "bench D=768 F=24576 K=32 B=16384" 75 $PY "${BENCH[@]}" --shape 768 24576 32 16384 \
    --impls "${OURS[@]}" sparsify dense-bf16
part "bench D=2304 F=16384 K=64 B=8192" 80 $PY "${BENCH[@]}" --shape 2304 16384 64 8192 \
    --impls "${OURS[@]}" sparsify dense-bf16 saelens-bf16
# where the step's time goes, kernel by kernel (eager: graph replays hide kernel names);
# session 1, unfused: torch.topk 3.0 ms, segment matmul 1.5, cuBLAS 0.9, Adam 0.4 of 7.3 ms
part "profile eager fast step, both shapes" 45 $PY scripts/bench_train.py --device cuda \
    --profile 5 --shape 768 24576 32 16384 --shape 2304 16384 64 8192 \
    --impls saelens_lite-topk-fast saelens_lite-topk-fast-pruned saelens_lite-topk-fast-dense
# each kernel alone over its launch settings (tiles, warps, stages and pruned KT' of the fused
# top-k; BLOCK_N, BLOCK_D, warps and index prefetch of the segment reduction), both shapes,
# every variant checked against a reference first; tiles screened without a GPU by
# triton_compile_check.py (no spills, 2-3 programs per SM where the default allows only 1)
part "kernel sweep (scripts/bench_kernels.py)" 140 $PY scripts/bench_kernels.py --device cuda \
    --shape 768 24576 32 16384 --shape 2304 16384 64 8192
part "train() end to end: fast_step auto vs off vs pruned" 95 $PY - <<'EOF'
import json, logging, time
import torch
from saelens_lite.training import TrainConfig, train, trainer

logging.basicConfig(level=logging.WARNING)
STEPS, WINDOW = 60, 30  # the dead window passes at step 30: AuxK from then on
_step, marks = trainer._train_step, {}

def timed(hook, st, x_BD, step, config, *a):  # wall time at step boundaries, GPU drained
    if step in (5, 35):
        torch.cuda.synchronize(); marks[step] = time.perf_counter()
    r = _step(hook, st, x_BD, step, config, *a)
    if step in (29, STEPS - 1):
        torch.cuda.synchronize(); marks[step] = time.perf_counter()
    return r

trainer._train_step = timed
for D, F, K, B in ((768, 24576, 32, 16384), (2304, 16384, 64, 8192)):
    x = torch.randn(131072, D, device="cuda")
    runs = (("auto", "auto", "auto", x), ("off", "off", "auto", x), ("pruned", "on", "pruned", x),
            ("auto-hostdata", "auto", "auto", x.cpu()))
    for name, fast, select, data in runs:
        marks.clear()
        cfg = TrainConfig(architecture="topk", latents=F, k=K, batch_size=B, tokens=B * STEPS,
                          fast_step=fast, topk_select=select, log_every=STEPS, checkpoint_every=0,
                          dead_window_tokens=B * WINDOW, out_dir=f"/tmp/e2e_{D}_{name}",
                          progress=False, seed=0)
        t = time.perf_counter()
        try:
            train(cfg, data)
        except Exception as e:
            print(f"e2e D={D} F={F} K={K} B={B} {name}: FAILED {type(e).__name__}: {e}"[:400])
            continue
        wall = time.perf_counter() - t
        pre = 24 * B / (marks[29] - marks[5]) / 1e6
        post = 25 * B / (marks[STEPS - 1] - marks[35]) / 1e6
        rec = json.loads(open(f"/tmp/e2e_{D}_{name}/metrics.jsonl").read().splitlines()[-1])
        print(f"e2e D={D} F={F} K={K} B={B} {name:14s} {pre:6.2f}M tok/s before the dead window, "
              f"{post:6.2f}M after (AuxK), wall {wall:5.1f}s, fvu {rec['fvu']:.4f} "
              f"dead {rec['dead_fraction']:.3f}", flush=True)
    del x
    torch.cuda.empty_cache()
EOF
part "host data path (bf16 cache -> batches)" 35 $PY scripts/bench_data.py --batches 24
part "cuda tests" 45 $PY -m pytest -q --maxfail=5 -p no:cacheprovider \
    tests/kernels/test_triton_kernels.py tests/kernels/test_kernels.py tests/training/test_fast_step_training.py \
    -k "cuda or triton_kernels"
part "harvest tiny-llama: overlapped vs plain" 30 $PY - <<'EOF'
import shutil, time
import torch
import numpy as np
from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.lm.load import load_model

lm = load_model("tiny-llama", device="cuda", dtype=torch.bfloat16)  # as harvest does on CUDA
cfg = HarvestConfig(model="tiny-llama", hooks=["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"],
                    dataset="builtin:pydocs", context_size=128, tokens=150_000, batch_size=64,
                    device="cuda")
caches = {}
for overlap in (False, True, False, True):  # twice each: the first pair warms up
    out = f"/tmp/harvest_{overlap}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    c = harvest(cfg, out, model=lm, progress=False, overlap=overlap)
    dt = time.perf_counter() - t
    print(f"harvest overlap={overlap}: {c.n_tokens / dt / 1e3:.0f}k tok/s "
          f"({c.n_tokens} tokens, {dt:.2f}s)", flush=True)
    caches[overlap] = c
a, b = caches[False], caches[True]
same = np.array_equal(a.token_ids, b.token_ids) and all(
    np.array_equal(np.asarray(a.activations(h)[:]), np.asarray(b.activations(h)[:])) for h in a.hook_names)
print(f"harvest caches identical: {same}")
EOF
echo "=== summary (tok/s; x peer = our speed / peer's) ==="
grep -E "^e2e|^harvest|^shape|^=== kernel|impl  |^  profile|^ +[0-9.]+ ms|^(encoder|segment|gather|  [0-9]+x|  BLOCK|  cuBLAS|  torch|  decode|  sampled| pattern)|^  (saelens|sparsify|dense|skip|fail|floor|iter|trainer)|check (fast|fused|pruned)|passed|failed|rc=[1-9]" "$LOG" || true
echo "total $(($(date +%s) - t0))s"
