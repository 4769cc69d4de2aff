"""Compile every Triton kernel of the CUDA fast training step for a GPU, without a GPU.

The CPU tests run the kernels in Triton's interpreter, which checks their arithmetic but not
that they compile: the interpreter accepts code the compiler rejects, and it says nothing of
registers, spills or shared memory, which decide whether a tile size is any good. This script
runs the real fast step (`training.fast_step.sparse_loss_and_grads`) at full size on PyTorch's
"meta" device (shapes only, no memory, no arithmetic) with a stand-in Triton driver that
reports a CUDA target (default sm_90, the H100/H200). Every kernel launch then compiles, with
the specialisations a real launch would get (dtypes, constexprs, 16-byte-divisible sizes),
down to a cubin with Triton's own ptxas, and is not run. For each kernel it prints the
registers per thread, local-memory bytes (spills), shared memory and the resident programs per
SM those allow (sm_90 limits), so tile sizes can be screened before GPU time is spent.

Exit status 1 if any kernel fails to compile (or, with --fail-on-spill, spills); 3 if the
harness itself does not work with the installed Triton (a trivial probe kernel fails).

    python scripts/triton_compile_check.py                       # both issue-7 shapes
    python scripts/triton_compile_check.py --shape 768 24576 32 16384 \\
        --topk-blocks 64,256,64 128,128,64,8,2             # tile screen: B,F,D[,warps[,stages]]

Compile with the Triton the GPU machine has: e.g. `python -m venv /tmp/t36 && /tmp/t36/bin/pip
install torch==2.13.0 triton==3.6.0 ...` (the CPU torch wheel is enough).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

os.environ.pop("TRITON_INTERPRET", None)  # compile, don't interpret (read at kernel definition)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

# sm_90 (H100/H200) per-SM limits: CUDA C Programming Guide, "Compute Capabilities" table
SM_REGS, SM_THREADS, SM_BLOCKS, SM_SMEM, BLOCK_SMEM = 65536, 2048, 32, 233472, 232448
REG_UNIT = 256  # registers are allocated per warp in units of 256


class _MetaDriver:
    """The parts of a Triton driver that compiling (not launching) a kernel asks for."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def is_active(self) -> bool:
        return True

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("meta")


@dataclass
class Compiled:
    kernel: str
    where: str
    consts: dict
    warps: int
    stages: int
    shared: int
    seconds: float
    usage: dict = field(default_factory=dict)
    error: str | None = None

    def blocks_per_sm(self) -> int | None:
        regs = self.usage.get("REG")
        if regs is None:
            return None
        per_warp = -(-regs * 32 // REG_UNIT) * REG_UNIT
        limits = [SM_BLOCKS, SM_THREADS // (32 * self.warps), SM_REGS // (per_warp * self.warps)]
        if self.shared:
            limits.append(SM_SMEM // self.shared if self.shared <= BLOCK_SMEM else 0)
        return min(limits)


class Recorder:
    """Turns every Triton launch into a compile for the target; keeps what it compiled."""

    def __init__(self, arch: int):
        self._active = driver._active  # None unless set: reading `active` needs a GPU
        driver.set_active(_MetaDriver(arch))
        self.seen: dict[tuple, Compiled] = {}
        self.where = ""
        self._run = JITFunction.run
        rec = self

        def run(jit, *args, grid, warmup, **kw):
            names = [p.name for p in jit.params]
            consts = {n: a for n, a, p in zip(names, args, jit.params) if p.is_constexpr}
            t = time.perf_counter()
            try:
                k = rec._run(jit, *args, grid=grid, warmup=True, **kw)
            except Exception as e:  # record and go on: the step continues on meta tensors
                c = Compiled(jit.fn.__name__, rec.where, consts, kw.get("num_warps", 4),
                             kw.get("num_stages", 3), 0, time.perf_counter() - t,
                             error=_one_line(e))  # fmt: skip
                rec.seen.setdefault((c.kernel, repr(consts), repr(kw), "err"), c)
                return None
            key = (jit.fn.__name__, k.metadata.hash)
            if key not in rec.seen:
                md = k.metadata
                rec.seen[key] = Compiled(
                    jit.fn.__name__, rec.where, consts, md.num_warps, md.num_stages, md.shared,
                    time.perf_counter() - t, _resource_usage(k.asm.get("cubin")),
                )  # fmt: skip
            return k

        JITFunction.run = run

    def close(self) -> None:
        JITFunction.run = self._run
        driver._active = self._active


_SASS_LINE = re.compile(r"\s+/\*[0-9a-f]{4,}\*/\s+\S")


def _one_line(e: Exception) -> str:
    """The error on one line, its end kept (Triton puts the reason after the source excerpt)."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= 400 else "..." + text[-400:]


def _resource_usage(cubin: bytes | None) -> dict:
    """REG/LOCAL/STACK/SHARED of the cubin's kernel and its SASS length, from the cuobjdump
    Triton ships."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    tool = tool if os.path.exists(tool) else shutil.which("cuobjdump")
    if not cubin or not tool:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out, sass = (
            subprocess.run([tool, flag, f.name], capture_output=True, text=True).stdout
            for flag in ("--dump-resource-usage", "-sass")
        )
    usage = {}
    for line in out.splitlines():
        if "REG:" in line:
            for item in line.split():
                name, _, value = item.partition(":")
                if value.isdigit():
                    usage[name] = int(value)
    # static SASS instructions (one per "/*addr*/ OP ..." line): the fused kernel's top-k
    # network is unrolled, so this is close to its per-tile epilogue work
    usage["SASS"] = sum(1 for line in sass.splitlines() if _SASS_LINE.match(line))
    return usage


HARNESS_UNSUPPORTED = 3
"""Exit status when the stand-in driver cannot compile even a trivial kernel with this Triton
(its internals changed): nothing is known about our kernels then."""


@triton.jit
def _probe_kernel(out_ptr, N, BLOCK: triton.language.constexpr):
    offs = triton.language.arange(0, BLOCK)
    triton.language.store(out_ptr + offs, offs, mask=offs < N)


def _probe(rec: Recorder) -> bool:
    """Whether the harness compiles a trivial kernel (so a failure below is our kernels')."""
    before = len(rec.seen)
    try:
        with torch.device("meta"):
            _probe_kernel[(1,)](torch.empty(16, dtype=torch.int32), 16, 16)
    except Exception as e:
        print(f"the compile harness does not work with this Triton: {_one_line(e)}")
        return False
    probe = [c for c in list(rec.seen.values())[before:] if c.kernel == "_probe_kernel"]
    if not probe or probe[0].error:
        why = probe[0].error if probe else "no compile was recorded"
        print(f"the compile harness does not work with this Triton: {why}")
        return False
    for key in list(rec.seen)[before:]:  # not one of ours: keep it out of the table
        del rec.seen[key]
    return True


def run_step(D: int, F: int, K: int, B: int, arch: str, dead: bool, select: str) -> None:
    """One fast training step on meta tensors (every kernel launch compiles instead)."""
    from saelens_lite.kernels import sparse
    from saelens_lite.saes import SAE, SAEConfig
    from saelens_lite.training import fast_step

    os.environ[fast_step.FORCE_LOWP_ENV] = "1"  # the CUDA path, on meta tensors
    os.environ[sparse.FORCE_TRITON_ENV] = "1"
    with torch.device("meta"):
        sae = SAE.from_config(SAEConfig.build(d_in=D, d_sae=F, architecture=arch, k=K))
        x_BD = torch.empty(B, D)
        dead_F = torch.empty(F, dtype=torch.bool) if dead else None
        fast_step.sparse_loss_and_grads(
            sae, x_BD, dead_mask_F=dead_F, compute_dtype=torch.bfloat16, select=select
        )


def _parse_blocks(text: str) -> tuple[tuple[int, int, int], int | None, int | None]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) not in (3, 4, 5) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(
            f"--topk-blocks takes BLOCK_B,BLOCK_F,BLOCK_D[,warps[,stages]] of positive ints, "
            f"got {text!r}"
        )
    return tuple(parts[:3]), *(parts[3:] + [None, None])[:2]


SEGMENT_SETTINGS = ("SEGMENT_BLOCK_N", "SEGMENT_BLOCK_D", "SEGMENT_WARPS", "SEGMENT_PREFETCH")


def _parse_segment(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(",")]
    if not 1 <= len(parts) <= 4 or min(parts[:3]) <= 0 or parts[3:] not in ([], [0], [1]):
        raise argparse.ArgumentTypeError(
            f"--segment takes BLOCK_N[,BLOCK_D[,warps[,prefetch 0|1]]] (positive ints), "
            f"got {text!r}"
        )
    return tuple(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90)")
    ap.add_argument("--shape", nargs=4, type=int, action="append", metavar=("D", "F", "K", "B"),
                    help="repeatable; default the issue's 768 24576 32 16384 and "
                         "2304 16384 64 8192")  # fmt: skip
    from saelens_lite.saes import fast_step_architectures

    ap.add_argument("--archs", nargs="+", default=fast_step_architectures(),
                    choices=fast_step_architectures())  # fmt: skip
    ap.add_argument("--topk-blocks", nargs="+", type=_parse_blocks, default=[(None, None, None)],
                    help="fused-kernel tiles to compile, BLOCK_B,BLOCK_F,BLOCK_D[,warps"
                         "[,stages]] each (default: the module's)")  # fmt: skip
    ap.add_argument("--segment", "--segment-block-n", type=_parse_segment, nargs="+",
                    default=[()], help="segment-reduction settings to compile, "
                    "BLOCK_N[,BLOCK_D[,warps[,prefetch 0|1]]] each (default: the module's)")
    ap.add_argument("--fail-on-spill", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="also write the table as JSON records")
    args = ap.parse_args(argv)
    shapes = args.shape or [[768, 24576, 32, 16384], [2304, 16384, 64, 8192]]

    from saelens_lite.kernels import triton_sparse, triton_topk

    rec = Recorder(args.arch)
    print(f"triton {triton.__version__}, torch {torch.__version__}, target sm_{args.arch}")
    if not _probe(rec):
        rec.close()
        return HARNESS_UNSUPPORTED
    defaults = (triton_topk.BLOCKS, triton_topk.WARPS, triton_topk.STAGES)
    segment_default = tuple(getattr(triton_sparse, n) for n in SEGMENT_SETTINGS)
    try:
        for (blocks, warps, stages), seg in itertools.product(args.topk_blocks, args.segment):
            triton_topk.BLOCKS = blocks or defaults[0]
            triton_topk.WARPS = warps or defaults[1]
            triton_topk.STAGES = stages or defaults[2]
            for name, v, d in zip(SEGMENT_SETTINGS, seg + segment_default[len(seg):],
                                  segment_default):  # fmt: skip
                setattr(triton_sparse, name, type(d)(v))
            for D, F, K, B in shapes:
                for arch in args.archs:
                    for dead in (False, True):
                        for select in ("auto", "pruned", "torch"):
                            rec.where = f"{D}/{F}/{K}/{B} {arch}{' dead' if dead else ''}"
                            run_step(D, F, K, B, arch, dead, select)
    finally:
        rec.close()
        triton_topk.BLOCKS, triton_topk.WARPS, triton_topk.STAGES = defaults
        for name, d in zip(SEGMENT_SETTINGS, segment_default):
            setattr(triton_sparse, name, d)

    fails = spills = 0
    print(f"\n{'kernel':<24} {'first use (D/F/K/B arch)':<32} {'warps':>5} {'stages':>6} "
          f"{'regs':>4} {'spill':>5} {'smem KiB':>8} {'prog/SM':>7} {'sass':>5} {'sec':>5}  "
          "constexprs")  # fmt: skip
    for c in rec.seen.values():
        consts = " ".join(f"{k}={v}" for k, v in c.consts.items())
        if c.error:
            fails += 1
            print(f"{c.kernel:<24} {c.where:<32} FAILED: {c.error}  [{consts}]")
            continue
        spill = c.usage.get("LOCAL", 0) + c.usage.get("STACK", 0)
        spills += spill > 0
        occ = c.blocks_per_sm()
        print(f"{c.kernel:<24} {c.where:<32} {c.warps:>5} {c.stages:>6} "
              f"{c.usage.get('REG', '?'):>4} {spill if c.usage else '?':>5} "
              f"{c.shared / 1024:>8.1f} {occ if occ is not None else '?':>7} "
              f"{c.usage.get('SASS', '?'):>5} {c.seconds:>5.1f}"
              f"  {consts}")  # fmt: skip
    if args.json:
        records = [dict(asdict(c), blocks_per_sm=c.blocks_per_sm()) for c in rec.seen.values()]
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1, default=str)
    print(f"\n{len(rec.seen)} kernel variants, {fails} failed to compile, {spills} spill")
    return 1 if fails or (spills and args.fail_on_spill) else 0


if __name__ == "__main__":
    sys.exit(main())
