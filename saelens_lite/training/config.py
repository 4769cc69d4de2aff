"""Training configuration: one dataclass, a docstring per field, validated on construction.

Every check runs in ``__post_init__`` (or, for checks that need the data, in
:func:`saelens_lite.training.trainer.train` before the first step), so a bad value fails before
any compute is spent. Errors name the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from saelens_lite.training.sae_flags import FLAT_SAE_FIELDS, SAEFlags, architectures
from saelens_lite.training.targets import check_config as check_target_fields
from saelens_lite.util.validate import check_ints

if TYPE_CHECKING:
    from saelens_lite.saes.config import SAEConfig

Decay = Literal["linear", "cosine", "none"]
"""Shape of the lr decay over the last ``decay_fraction`` of the steps."""
ComputeDtype = Literal["auto", "float32", "bfloat16"]
"""The training step's compute precision (autocast); weights and Adam stay float32."""
WandbMode = Literal["auto", "online", "offline", "disabled"]
"""How W&B logs (auto: online with a login, else offline)."""
FastStepMode = Literal["auto", "on", "off"]
"""Whether the fast step (closed-form sparse gradients) or autograd trains."""
TopkSelect = Literal["auto", "fused", "pruned", "torch"]
"""The fast step's top-k on CUDA (training/fast_step.py, kernels/triton_topk.py)."""

DECAYS = get_args(Decay)
COMPUTE_DTYPES = get_args(ComputeDtype)
WANDB_MODES = get_args(WandbMode)
FAST_STEP_MODES = get_args(FastStepMode)
TOPK_SELECT_MODES = get_args(TopkSelect)

# Fields that may change between an interrupted run and its resumption: they change where
# things are written or how they are reported, never the weights.
RESUME_FREE_FIELDS = frozenset({
    "out_dir", "resume", "log_every", "progress", "checkpoint_every", "keep_checkpoints",
    "wandb", "wandb_project", "wandb_name", "wandb_mode", "device", "activations",
    "cuda_graphs",  # a replayed graph runs the same kernels as the eager fast step
    # each hook's SAE sees the same full batches either way; the checkpoint layout it implies
    # (one file per rank) is checked on its own by the trainer, with a clearer error
    "distribute_hooks",
})


# Keys the trainer adds to ``config.json`` beside the config's fields.
RUN_INFO_KEYS = frozenset({"format_version", "widths", "n_tokens"})


SHORT_RUN_LR_FACTOR = 4.0
"""The default lr's factor over the long-run rule for runs of at most ``LR_TAPER_STEPS[0]``
steps (docs/quality_vs_peers.md, "Default learning rate")."""
LR_TAPER_STEPS = (1_000, 25_000)
"""Steps where the short-run factor starts to fall, and where it reaches 1."""


def width_rule_lr(d_sae: int) -> float:
    """2e-4 / sqrt(d_sae / 2^14): Gao et al. 2024's lr-vs-width rule for long runs (EleutherAI
    sparsify's Adam default)."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def default_lr(d_sae: int, steps: int) -> float:
    """Adam lr for ``d_sae`` latents and a run of ``steps`` optimiser steps:

        lr = 2e-4 / sqrt(d_sae / 2^14) * m(steps),
        m = 4                                   for steps <= 1,000,
        m = 4^(1 - log(steps / 1000) / log 25)  between (log-linear in steps),
        m = 1                                   for steps >= 25,000.

    The first factor is the lr-vs-width rule of Gao et al. 2024 ("Scaling and evaluating sparse
    autoencoders"; EleutherAI sparsify's Adam default), fitted to long runs. At short budgets
    it is too low. On SmolLM2-135M (F = 4,608, k = 32, batch 4,096, held-out FVU; see
    docs/quality_vs_peers.md):
    - at 244 steps (1M tokens), with outlier rows clipped (``outlier_norm_ratio``), 4x beat
      3x at blocks.14 (typical-token FVU 0.174 against 0.183) and blocks.9 (0.117 against
      0.123) with at most 0.6% of latents dead; 5.3x gained more FVU but left 1.9% dead at
      blocks.9;
    - at 2,441 steps (10M tokens) 3x beat 1x by 9% on typical tokens, and 5x bought 0.003
      more for 2.9% dead; the taper gives 2.7x there.
    The taper back to the published rule is not measured beyond that: the gap was shrinking
    with the budget, and runs of 100M+ tokens are where the rule was fitted. L1 ReLU SAEs keep
    the rule (`takes_short_run_factor`): at 3x, 74% of their latents died in a 244-step run
    at the default L1. That compared a much sparser SAE (a higher lr makes a given L1 sparser):
    at matched L0 on SmolLM2 blocks.9 (2 seeds, 244 steps) 3.2x gave held-out FVU 0.19 at L0 25
    (L1 2, 2.8% dead) against 1x's 0.47-0.49 at L0 31 (L1 4) (docs/synthsae.md); the factor and a
    retuned L1 default for ReLU wait on seeds and more hooks."""
    lo, hi = LR_TAPER_STEPS
    if steps <= lo:
        m = SHORT_RUN_LR_FACTOR
    elif steps >= hi:
        m = 1.0
    else:
        m = SHORT_RUN_LR_FACTOR ** (1 - math.log(steps / lo) / math.log(hi / lo))
    return width_rule_lr(d_sae) * m


def takes_short_run_factor(sae: SAEConfig) -> bool:
    """Trainer policy: whether the default lr takes the short-run factor (`default_lr`). It was
    measured to help the sparse coders with a hard sparsity (TopK, BatchTopK, Matryoshka; and
    JumpReLU's L0 target) and to hurt an L1 penalty (ReLU: 74% of latents dead at 3x); the
    baselines were not measured, so they keep the rule. Read from the registry's math
    properties (``SAE.is_sparse_coder``, the config's ``sparsity_field``), not a list of names."""
    from saelens_lite.saes import REGISTRY

    return REGISTRY[sae.architecture].is_sparse_coder and sae.sparsity_field != "l1_coeff"


def default_sae() -> SAEConfig:
    """TrainConfig.sae's default: a TopK config (k = 32) not sized yet."""
    from saelens_lite.saes.config import SAEConfig

    return SAEConfig.build(architecture="topk")



def check_dead_min_rate(rate) -> None:
    """``TrainConfig.dead_min_rate`` must be None or a rate in (0, 1)."""
    if rate is not None and not (_finite(rate) and 0 < rate < 1):
        raise ValueError(f"dead_min_rate={rate!r}: must be None or a rate in (0, 1) (a fraction of tokens, e.g. 1e-4)")


@dataclass
class TrainConfig:
    """How to train one SAE per hook point."""

    # --- what to train --------------------------------------------------------------------
    sae: SAEConfig = field(default_factory=default_sae)
    """The SAE to train: an architecture's config (``SAEConfig.build(architecture="relu",
    l1_coeff=5.0)``, ``TopKConfig(k=16)``; a transcoder sets ``target_hook``). Its ``d_in`` is
    set per hook from the data (0, or the hook's width), as are ``hook_name`` and ``model_name``;
    ``d_sae`` 0 means ``expansion * d_in``. The CLI's flat flags map onto it (SAEFlags)."""
    hooks: list[str] = field(default_factory=list)
    """Hook point names to train on, one SAE each. Empty: every hook of a cache, or the single
    column of a tensor / file (named ``activations``). Required when streaming from a model. A
    name with ``*`` or ``[0-3]`` is a pattern over block numbers (``blocks.*.hook_mlp_in``: every
    block's, ``blocks.[0-3].hook_mlp_in``: the first four's, in block order); with a
    ``target_hook`` pattern the i-th input pairs with the i-th target."""
    expansion: int = 8
    """Latents per input dimension (d_sae = expansion * d_in), unless ``sae.d_sae`` (``--latents``) is
    set."""

    # --- optimisation ---------------------------------------------------------------------
    lr: float | None = None
    """Adam learning rate. None: `default_lr` of d_sae and the run's steps (2e-4 / sqrt(d_sae /
    2**14), the lr-vs-width rule of Gao et al. 2024 and EleutherAI sparsify; for TopK,
    BatchTopK and JumpReLU times 4 for runs of up to 1,000 steps, tapering to 1x at 25,000)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam (beta1, beta2)."""
    batch_size: int = 4096
    """Tokens per optimiser step."""
    tokens: int = 10_000_000
    """Total training tokens. May exceed the data: the trainer then makes fresh shuffled
    passes over it. Steps = tokens // batch_size."""
    warmup_steps: int | None = None
    """Linear lr warm-up from 0: lr_s = lr * min(1, (s + 1) / warmup_steps). None: 5% of the
    steps, at most 1000 (a fixed 1000 would never finish warming up in a short run)."""
    decay: Decay = "linear"
    """Shape of the lr decay to 0 over the last ``decay_fraction`` of steps: linear, cosine or
    none."""
    decay_fraction: float = 0.2
    """Fraction of the steps (at the end) over which the lr decays to 0."""
    sparsity_warmup_steps: int = 0
    """Linear warm-up of the sparsity coefficient from 0 over this many steps (0: none);
    Conerly et al. 2024 warm the L1 coefficient up over the first 5% of training."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""

    # --- data -----------------------------------------------------------------------------
    normalize_activations: bool = True
    """Scale inputs by a fixed c so that E||c x|| = sqrt(D), estimated on a sample before
    training (so one lr works across models). Folded into the weights at save time: the saved
    SAE reads and writes raw activations."""
    init_sample_tokens: int = 16_384
    """Tokens sampled for the normalisation scale and the decoder-bias init."""
    outlier_norm_ratio: float | None = 5.0
    """Norm clipping of outlier training rows, for TopK SAEs that reconstruct their input: a
    row with ||x|| > r * m, m the median row norm of the init sample, is trained on as
    x * r * m / ||x|| (its direction kept, its norm capped). A handful of massive-activation
    rows (SmolLM2's first tokens: 7x-118x the median, 0.017% of the rows, 40% of the variance
    at blocks.14) otherwise dominate the MSE gradient. Only architectures that pick each row's
    k latents by rank (``SAE.rank_selected``: TopK) are clipped; a threshold learnt on capped
    rows lets hundreds of latents fire on the full-norm row. A transcoder's pairs are used as
    they are (its target is not linear in its input). None (``--outlier-norm-ratio none``): rows as
    they are. At SmolLM2 blocks.14, 1M tokens, 5 gave a typical-token held-out FVU of 0.183
    against 0.196 with the all-row FVU kept (0.079 against 0.081; leaving the rows out instead
    gave 0.183 and 0.152) (docs/quality_vs_peers.md)."""
    activations: str | None = None
    """A cache folder or an ``.npy`` / ``.safetensors`` file of shape (N, D), used when
    ``train`` gets no data argument."""
    model: str | None = None
    """Stream activations straight from this model (alias, HF id or path) when no data is
    given; needs ``dataset`` and ``hooks``."""
    dataset: str = "builtin:pydocs"
    """Corpus spec for streaming (see ``corpus.iter_documents``)."""
    text_column: str = "text"
    """Text column / key of the streaming corpus."""
    context_size: int = 128
    """Tokens per packed context when streaming."""
    model_batch_size: int = 16
    """Contexts per forward pass when streaming."""
    buffer_contexts: int = 256
    """Contexts whose tokens are shuffled together when streaming (the shuffle buffer)."""

    # --- run ------------------------------------------------------------------------------
    seed: int = 0
    """Seed of the SAE init, the data order and every other random choice."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (CUDA when present)."""
    dtype: ComputeDtype = "auto"
    """Compute precision: auto, float32 or bfloat16 (autocast). Weights and optimizer state stay
    float32. auto: bf16 on CUDA; on a CPU with native bf16 (AVX512-BF16 or AMX; override with
    SAELENS_LITE_CPU_BF16=0/1) bf16 for the top-k architectures, whose only bf16 matmul picks
    the latents; float32 otherwise (see training.hook_state.autocast_dtype)."""
    fast_step: FastStepMode = "auto"
    """The training step: ``on`` uses ``training.fast_step.FastTrainStep`` (closed-form sparse
    gradients, fused Adam; on CUDA 2-3x the tokens/s of autograd), ``off`` autograd through
    ``training_forward``, ``auto`` = on on CUDA where the architecture's class supports these
    options (``SAE.supports_fast_step`` and ``fast_step_supports``, e.g. not transcoders), off
    on CPU (where it gains little). ``on`` needs such an architecture; on a CPU it runs the
    same math eagerly (equal to autograd up to float rounding). Differences from autograd:
    BatchTopK (and Matryoshka) caps a row at 2k latents, and on CUDA the sparse gathers run in bf16."""
    topk_select: TopkSelect = "auto"
    """The fast step's top-k on CUDA: ``fused`` (the Triton matmul + top-k kernel; k <= 64),
    ``pruned`` (the same kernel keeping fewer candidates per tile than k, rare saturated rows
    recomputed exactly; any k), ``torch`` (bf16 matmul, then ``torch.topk``), ``auto`` (fused
    where it applies, else torch). All select the same latents up to bf16 rounding."""
    cuda_graphs: bool = True
    """With the fast step on CUDA in one process: capture the whole step (forward, backward,
    clip, decoder hooks, Adam) in a CUDA graph and replay it. Data-parallel runs (torchrun)
    always run the fast step eagerly, so the gradient all-reduce sits between backward and
    Adam."""
    distribute_hooks: bool = False
    """Under torchrun with W processes: rank r trains only the hooks ``hooks[r::W]`` (in this
    order), each on the whole global batch, with no gradient all-reduce (EleutherAI sparsify's
    ``--distribute_modules``). For many hooks whose SAEs each fit one GPU; off (data parallel,
    every rank trains every hook on its slice of the batch) suits one large SAE. Needs at least
    W hooks. Each rank reads only its hooks from the data, writes its own checkpoint files and
    SAE folders; resume needs the same W. Without torchrun it changes nothing."""
    dead_window_tokens: int = 10_000_000
    """A latent that has not fired for more than this many tokens counts as dead (and is fed
    to the auxiliary loss where the architecture has one). The logged ``dead_fraction`` uses
    ``min(this, half the tokens so far)``, so runs shorter than this still report it."""
    dead_min_rate: float | None = None
    """Also dead (fed to the auxiliary loss): a latent that fires, but on fewer than this
    fraction of the tokens, estimated over the last ``dead_window_tokens`` (an average of
    "fired in the batch", :mod:`saelens_lite.training.dead_latents`). None: only latents silent
    for the whole window. The logged ``dead_fraction`` stays the silence count."""
    checkpoint_every: int = 20_000_000
    """Write a resumable checkpoint every this many tokens (0: never)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    log_every: int = 100
    """Steps between metric records (metrics.jsonl, progress bar, W&B)."""
    progress: bool = True
    """Show a progress bar."""
    wandb: bool = False
    """Log metrics to Weights & Biases."""
    wandb_project: str = "saelens_lite"
    """W&B project name."""
    wandb_name: str | None = None
    """W&B run name (default: the run folder's name)."""
    wandb_mode: WandbMode = "auto"
    """auto (online when a W&B login is configured, else offline), online, offline or
    disabled. W&B never prompts."""
    out_dir: str = "runs/sae"
    """Run folder: config.json, metrics.jsonl, checkpoints/ and one SAE folder per hook."""
    resume: bool = False
    """Continue an interrupted run from the newest checkpoint in ``out_dir``."""

    def __post_init__(self) -> None:
        self.hooks = list(self.hooks)
        try:
            self.betas = [float(b) for b in self.betas]
        except (TypeError, ValueError):
            raise ValueError(f"betas={self.betas!r}: must be two numbers in [0, 1)") from None
        self.check_sae()
        check_target_fields(self)  # before fast_step: a transcoder's own error names it
        check_ints(self, ("expansion", "batch_size", "tokens", "init_sample_tokens",
                     "context_size", "model_batch_size", "buffer_contexts", "dead_window_tokens",
                     "keep_checkpoints", "log_every"), minimum=1)
        check_ints(self, ("sparsity_warmup_steps", "checkpoint_every", "seed"), minimum=0)
        if self.warmup_steps is not None:
            check_ints(self, ("warmup_steps",), minimum=0)
        if self.lr is not None and not (_finite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r}: must be a finite number > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas!r}: must be two numbers in [0, 1)")
        check_dead_min_rate(self.dead_min_rate)
        if self.outlier_norm_ratio is not None and not (
                _finite(self.outlier_norm_ratio) and self.outlier_norm_ratio >= 1):
            raise ValueError(f"outlier_norm_ratio={self.outlier_norm_ratio!r}: must be a finite "
                             "number >= 1, or None (no clipping)")
        if self.decay not in DECAYS:
            raise ValueError(f"decay={self.decay!r}: choose one of {list(DECAYS)}")
        if not (_finite(self.decay_fraction) and 0 <= self.decay_fraction <= 1):
            raise ValueError(f"decay_fraction={self.decay_fraction!r}: must be in [0, 1]")
        if self.grad_clip is not None and not (_finite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip={self.grad_clip!r}: must be > 0 or None")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {list(COMPUTE_DTYPES)}")
        if self.fast_step not in FAST_STEP_MODES:
            raise ValueError(f"fast_step={self.fast_step!r}: choose one of {list(FAST_STEP_MODES)}")
        if self.topk_select not in TOPK_SELECT_MODES:
            raise ValueError(f"topk_select={self.topk_select!r}: choose one of "
                             f"{list(TOPK_SELECT_MODES)}")
        for name in ("cuda_graphs", "distribute_hooks"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be true or false")
        if self.fast_step == "on" and not self.fast_step_supported:
            from saelens_lite.saes import fast_step_architectures

            raise ValueError(f"fast_step='on': needs architecture in {fast_step_architectures()} "
                             f"with options its class's fast step supports (SAE.fast_step_supports);"
                             f" got sae={self.sae!r} (use 'auto' or 'off')")
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb_mode={self.wandb_mode!r}: choose one of {list(WANDB_MODES)}")
        if self.tokens < self.batch_size:
            raise ValueError(f"tokens={self.tokens}: must be at least batch_size={self.batch_size}")
        if len(set(self.hooks)) != len(self.hooks):
            raise ValueError(f"hooks={self.hooks!r}: names must be unique")

    def check_sae(self) -> None:
        """``sae`` is an SAE config (its own fields validated it); with ``expansion`` the width
        is known only once the data is (``hook_state.build_sae`` checks k then)."""
        from saelens_lite.saes.config import SAEConfig

        if not isinstance(self.sae, SAEConfig):
            raise ValueError(f"sae={self.sae!r}: must be an SAEConfig (e.g. SAEConfig.build("
                             f"architecture='topk', k=32)); architectures: {architectures()}")

    @property
    def steps(self) -> int:
        """Optimiser steps: ``tokens // batch_size``."""
        return self.tokens // self.batch_size

    @property
    def warmup(self) -> int:
        """Warm-up steps in effect: ``warmup_steps``, or min(1000, 5% of the steps) when None."""
        return self.warmup_steps if self.warmup_steps is not None else min(1000, self.steps // 20)

    @property
    def fast_step_supported(self) -> bool:
        """Whether the fast step implements this architecture with these options
        (``SAE.supports_fast_step`` and ``SAE.fast_step_supports``, read through the registry)."""
        from saelens_lite.saes import REGISTRY  # here, not at the top: --help stays torch-free

        cls = REGISTRY[self.sae.architecture]
        return cls.supports_fast_step and cls.fast_step_supports(vars(self.sae))

    def use_fast_step(self, device_type: str) -> bool:
        """``fast_step`` resolved for a device type ("cuda", "cpu", ...)."""
        if self.fast_step == "auto":
            return device_type == "cuda" and self.fast_step_supported
        return self.fast_step == "on"

    def d_sae(self, d_in: int) -> int:
        """Number of latents for an input of width ``d_in``: ``sae.d_sae``, or ``expansion * d_in``
        when it is 0."""
        return self.sae.d_sae or self.expansion * d_in

    def lr_for(self, d_sae: int) -> float:
        """The configured lr, or `default_lr` for d_sae latents and this run's steps (with the
        short-run factor where the trainer's policy gives it: `takes_short_run_factor`)."""
        if self.lr is not None:
            return self.lr
        if takes_short_run_factor(self.sae):
            return default_lr(d_sae, self.steps)
        return width_rule_lr(d_sae)

    def to_dict(self) -> dict:
        """JSON-safe; ``sae`` nested as its flat cfg.json dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; also reads a run's ``config.json`` (ignoring the keys the
        trainer adds to it), and the flat spelling of ``sae`` (SAEFlags: the config.json of runs
        before issue 24, the CLI's flags)."""
        from saelens_lite.saes.config import SAEConfig

        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in RUN_INFO_KEYS}
        flat = {k: d.pop(k) for k in FLAT_SAE_FIELDS & set(d)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; allowed: {sorted(known | FLAT_SAE_FIELDS)}")
        if flat and "sae" in d:
            raise ValueError(f"TrainConfig {sorted(flat)}: the flat spelling of sae, given beside "
                             "sae; give one")
        if flat:
            return cls(sae=SAEFlags(**flat).sae_config(), **d)
        if isinstance(d.get("sae"), dict):
            d["sae"] = SAEConfig.from_dict(d["sae"])
        return cls(**d)

    def resume_mismatch(self, saved: dict) -> list[str]:
        """Fields that differ from a saved config and would change the weights (``sae.<field>``
        for the SAE's); a field added after the checkpoint was written reads as its default."""
        mine, theirs = _dotted(self.to_dict()), _dotted(TrainConfig.from_dict(saved).to_dict())
        return [k for k in mine if k.split(".")[0] not in RESUME_FREE_FIELDS
                and _norm(theirs.get(k)) != _norm(mine[k])]

    def value_of(self, name: str):
        """A field by its :meth:`resume_mismatch` name (``sae.k`` reads ``self.sae.k``)."""
        return _dotted(self.to_dict()).get(name)


def _dotted(d: dict) -> dict:
    """{"sae": {"k": 32}, "lr": x} -> {"sae.k": 32, "lr": x}."""
    return {f"{k}.{sk}" if isinstance(v, dict) else k: sv
            for k, v in d.items() for sk, sv in (v.items() if isinstance(v, dict) else [(None, v)])}


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


__all__ = ["TrainConfig", "SAEFlags", "default_lr", "width_rule_lr", "takes_short_run_factor",
           "architectures", "DECAYS", "COMPUTE_DTYPES", "RESUME_FREE_FIELDS",
           "FAST_STEP_MODES"]
