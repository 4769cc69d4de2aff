"""What is trained for one hook: its SAE (:func:`build_sae`), the fixed input scale
(:func:`normalization_scale`), its Adam (:func:`make_adam`) and its step, held by :class:`HookState`.

The SAE is known only through the registry interface (``saelens_lite.saes``). The step is the
fast step (``config.fast_step``, :mod:`saelens_lite.training.fast_step`: closed-form sparse
gradients and fused Adam, on CUDA in one process captured in a CUDA graph) where the config and
architecture allow it, else :class:`~saelens_lite.training.step.AutogradStep`. Data parallel,
gradients are averaged over ranks between backward and Adam.

Shapes: N tokens in a sample, D width.
"""

from __future__ import annotations

import copy
import math

import torch

from saelens_lite.training import targets
from saelens_lite.training.config import TrainConfig, width_rule_lr
from saelens_lite.training.dead_latents import DeadLatentTracker
from saelens_lite.training.step import AutogradStep
from saelens_lite.util import distributed


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The step's autocast dtype (None: plain float32). ``dtype="auto"``: bf16 on CUDA, and on a
    CPU that multiplies bf16 natively (:func:`saelens_lite.util.devices.cpu_has_native_bf16`)
    for the top-k architectures (:class:`~saelens_lite.saes.terms.AuxKConfig`): there the one
    bf16 matmul chooses the latents, whose values, decoder products and gradients stay float32
    (``kernels.selection``, ``kernels.sparse``), so only near-ties at the k-th place differ. On
    such a CPU the step runs ~1.4x faster (docs/benchmarks.md); the dense encoders (relu,
    jumprelu) and CPUs without native bf16 keep float32."""
    if config.dtype == "bfloat16":
        return torch.bfloat16
    if config.dtype == "auto" and (device.type == "cuda" or (device.type == "cpu" and _cpu_bf16_helps(config))):
        return torch.bfloat16
    return None


def _cpu_bf16_helps(config: TrainConfig) -> bool:
    from saelens_lite.saes.terms import AuxKConfig
    from saelens_lite.util.devices import cpu_has_native_bf16

    return isinstance(config.sae, AuxKConfig) and cpu_has_native_bf16()


def build_sae(config: TrainConfig, d_in: int, hook: str = "", target: str | None = None,
              model_name: str = ""):
    """An untrained SAE of ``config.sae`` sized for inputs of width ``d_in`` (d_sae from
    ``config.d_sae``), named after the hook and model it is trained on (``model_name``: the data
    source's model, e.g. a cache manifest's; else ``config.model``); ``target``: the hook a
    transcoder reconstructs (None: ``config.sae.target_hook``, a single pair's)."""
    import dataclasses

    from saelens_lite.saes import SAE

    d_sae = config.d_sae(d_in)
    if config.sae.k > d_sae:
        raise ValueError(f"k={config.sae.k}: must be at most the number of latents d_sae={d_sae} "
                         f"(hook {hook!r} has width {d_in})")
    if config.sae.d_in not in (0, d_in):
        raise ValueError(f"sae.d_in={config.sae.d_in}: hook {hook!r} has width {d_in} (0: set from the data)")
    cfg = dataclasses.replace(config.sae, d_in=d_in, d_sae=d_sae, hook_name=hook,
                              model_name=model_name or config.model or "",
                              target_hook=config.sae.target_hook if target is None else target)
    return SAE.from_config(cfg)


def normalization_scale(x_ND: torch.Tensor) -> float:
    """c with E||c x|| = sqrt(D) on the sample (a fixed, dataset-level scale)."""
    mean_norm = float(x_ND.float().norm(dim=-1).mean())
    if not mean_norm > 0:
        raise ValueError("activations: the data sample has zero norm; cannot normalise")
    return math.sqrt(x_ND.shape[-1]) / mean_norm


def clip_norm(x_ND: torch.Tensor, ratio: float) -> float:
    """ratio * the median row norm of the sample: the norm `clip_rows` caps rows at."""
    return ratio * float(x_ND.float().norm(dim=-1).median())


def clip_rows(x_BD: torch.Tensor, max_norm: float) -> torch.Tensor:
    """x_b * min(1, max_norm / ||x_b||) per row: rows above ``max_norm`` scaled down to it,
    direction kept. Elementwise, so the batch keeps its shape (and a captured step its graph)."""
    norm_B1 = x_BD.norm(dim=-1, keepdim=True)
    return x_BD * (max_norm / norm_B1).clamp(max=1.0)  # a zero row: inf -> 1


def param_groups(sae):
    """The SAE's parameters, or Adam parameter groups when ``sae.lr_scales()`` names any:
    the scaled parameters one group each (``lr_scale`` read by ``set_lr``), the rest one."""
    scales = sae.lr_scales()
    if not scales:
        return sae.parameters()
    named = dict(sae.named_parameters())
    rest = [p for n, p in named.items() if n not in scales]
    return [{"params": rest}] + [{"params": [named[n]], "lr_scale": s} for n, s in scales.items()]


def lr_note(config: TrainConfig, st) -> str:
    """How a default lr relates to the long-run rule (config.width_rule_lr), for the log."""
    if not st.lr_is_default:
        return ""
    m = st.base_lr / width_rule_lr(st.sae.cfg.d_sae)
    return f" (default for {config.steps} steps: {m:.2g}x the long-run rule)"


def make_adam(params, lr, betas, device: torch.device, *, capturable: bool = False):
    """torch.optim.Adam, fused (one kernel over all parameters) where torch has it: CUDA and
    CPU. On a CPU the fused step is ~8x faster than the default foreach one (5.3M parameters,
    2 threads: 2.3 ms against 18 ms; ~12% of a D=576, F=4608 training step), and equal to it
    up to rounding (float32: identical in a 5-step check; docs/benchmarks.md)."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused, capturable=capturable)


class HookState:
    """Everything trained for one hook. ``step``: its training step (training.step), the
    ``fast`` FastTrainStep where the config and architecture allow it (else None), or
    AutogradStep. ``data_parallel``: ranks share this hook's batches, so gradients,
    buffers, fired masks and metrics are reduced over them (False in one process and for
    distributed hooks, where this rank alone trains the hook on whole batches)."""

    def __init__(self, sae, config: TrainConfig, device: torch.device, data_parallel: bool = False,
                 amp: torch.dtype | None = None):
        self.sae = sae.to(device)
        self.data_parallel = data_parallel
        self.base_lr = config.lr_for(sae.cfg.d_sae)
        self.lr_is_default = config.lr is None
        self.fast = None
        betas = tuple(config.betas)
        if config.use_fast_step(device.type) and targets.fast_step_applies(config, sae):
            from saelens_lite.training.fast_step import FastTrainStep

            cuda = device.type == "cuda"
            graph = cuda and config.cuda_graphs and not data_parallel
            # on CUDA fused Adam reads a 0-dim tensor lr on the device (updated in place each
            # step, so a captured graph sees the schedule); on a CPU a float lr
            lr = torch.tensor(self.base_lr, dtype=torch.float32, device=device) if cuda else self.base_lr
            self.opt = make_adam(self.sae.parameters(), lr, betas, device, capturable=graph)
            hook = (lambda: distributed.all_reduce_grads_(self.sae.parameters())) if data_parallel else None
            self.fast = FastTrainStep(self.sae, self.opt, compute_dtype=amp, cuda_graph=graph,
                                      grad_clip=config.grad_clip, grad_hook=hook,
                                      select=config.topk_select)
            self.step = self.fast
        else:
            self.opt = make_adam(param_groups(self.sae), self.base_lr, betas, device)
            # data parallel: the mean over ranks is the gradient of the global batch
            hook = (lambda: distributed.all_reduce_grads_(self.sae.parameters())) if data_parallel else None
            # data parallel: global batch statistics for terms non-linear in them (JumpReLU)
            self.step = AutogradStep(self.sae, self.opt, grad_clip=config.grad_clip, grad_hook=hook,
                                     autocast_dtype=amp,
                                     batch_mean=distributed.batch_mean if data_parallel else None)
        self.dead = DeadLatentTracker(self.sae.W_dec.shape[0], config.dead_window_tokens, device,
                                      min_rate=config.dead_min_rate)
        self.scale = 1.0
        self.target_scale = 1.0  # a transcoder's target (training.targets); 1 for SAEs
        self.max_norm: float | None = None  # clip_rows' cap (config.outlier_norm_ratio); None: off

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)  # in place: a captured step reads this tensor
            else:
                g["lr"] = lr * g.get("lr_scale", 1.0)

    def state_dict(self) -> dict:
        return {"sae": self.sae.state_dict(), "opt": self.opt.state_dict(),
                "sae_training": {k: v.cpu() for k, v in self.sae.training_state().items()},
                **self.dead.state_dict(), "scale": self.scale, "base_lr": self.base_lr,
                "target_scale": self.target_scale, "max_norm": self.max_norm}

    def load_state_dict(self, d: dict) -> None:
        self.sae.load_state_dict(d["sae"])
        self.sae.load_training_state_(d.get("sae_training", {}))  # older checkpoints: none
        # Keep this run's optimiser settings (the lr tensor a captured step reads, fused /
        # capturable, which also place Adam's step counters): a checkpoint stores the state.
        opt_sd = copy.copy(d["opt"])
        mine = ("lr", "fused", "capturable", "foreach", "differentiable")
        opt_sd["param_groups"] = [{**g, **{k: cur[k] for k in mine if k in cur}}
                                  for g, cur in zip(d["opt"]["param_groups"], self.opt.param_groups)]
        self.opt.load_state_dict(opt_sd)
        self.dead.load_state_dict(d)
        self.scale = d["scale"]
        self.target_scale = d.get("target_scale", 1.0)
        self.max_norm = d.get("max_norm")  # older checkpoints trained on rows as they are
        if self.lr_is_default:
            # a run resumes at the lr it started with, even when a later version's default
            # differs; checkpoints without it predate the short-run factor (1x Gao et al.)
            self.base_lr = d.get("base_lr", width_rule_lr(self.sae.cfg.d_sae))


__all__ = ["HookState", "build_sae", "normalization_scale", "clip_norm", "clip_rows", "autocast_dtype", "make_adam",
           "param_groups", "lr_note"]
