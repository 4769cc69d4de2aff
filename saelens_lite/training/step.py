"""One training step, shared by the trainer (training/trainer.py) and the comparison's
sequence loop (compare/train.py):

    out = sae.training_forward(x_BD, target_BD=..., sparsity_scale=s, dead_mask_F=dead)
    out.loss.backward(); grad_hook(); sae.before_optimizer_step_(); clip; opt.step();
    sae.after_optimizer_step_()

`AutogradStep` runs it through autograd for every architecture; `training.fast_step.FastTrainStep`
(the same call signature and output, `saes.TrainOutput`) computes the gradients in closed form
for the classes that support it. Both end with `optimizer_step_`. The learning rate is the
caller's: set it on the optimiser before the call.

Shape legend: B batch, D width, F latents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from torch import Tensor

from saelens_lite.saes.base import SAE, TrainOutput
from saelens_lite.util import distributed


def optimizer_step_(
    sae: SAE,
    opt: torch.optim.Optimizer,
    params: Iterable[torch.nn.Parameter],
    *,
    grad_clip: float | None = None,
    grad_hook: Callable[[], None] | None = None,
) -> None:
    """Once the gradients are set: `grad_hook()` (the data-parallel all-reduce), the decoder
    hooks around `opt.step()` and the global-norm clip (sync-free, so a CUDA graph captures it)."""
    if grad_hook is not None:
        grad_hook()
    sae.before_optimizer_step_()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sae.after_optimizer_step_()


class AutogradStep:
    """`step(x_BD, dead_mask_F=None, *, sparsity_scale=1.0, target_BD=None) -> TrainOutput`:
    the loss of `sae.training_forward` (under autocast to `autocast_dtype` when given),
    backward, then `optimizer_step_`."""

    def __init__(
        self,
        sae: SAE,
        opt: torch.optim.Optimizer,
        *,
        grad_clip: float | None = None,
        grad_hook: Callable[[], None] | None = None,
        autocast_dtype: torch.dtype | None = None,
        batch_mean: Callable[[Tensor], Tensor] | None = None,
    ):
        self.sae, self.opt = sae, opt
        self.grad_clip, self.grad_hook, self.autocast_dtype = grad_clip, grad_hook, autocast_dtype
        self.batch_mean = batch_mean  # data parallel: the global batch's statistics

    def __call__(
        self,
        x_BD: Tensor,
        dead_mask_F: Tensor | None = None,
        *,
        sparsity_scale: float = 1.0,
        target_BD: Tensor | None = None,
    ) -> TrainOutput:
        sae, dt = self.sae, self.autocast_dtype
        ctx = torch.autocast(x_BD.device.type, dtype=dt) if dt is not None else nullcontext()
        # target_BD only where given: the baselines' training_forward has no such argument
        kw = {} if target_BD is None else {"target_BD": target_BD}
        with ctx, distributed.batch_statistics(self.batch_mean):
            out = sae.training_forward(x_BD, sparsity_scale=sparsity_scale,
                                       dead_mask_F=dead_mask_F, **kw)  # fmt: skip
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer_step_(sae, self.opt, sae.parameters(), grad_clip=self.grad_clip,
                        grad_hook=self.grad_hook)  # fmt: skip
        return out
