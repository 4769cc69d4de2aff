"""Dead latents: tokens since each latent last fired, and (optionally) its firing rate.

A latent that has not fired for more than ``dead_window_tokens`` tokens is dead; the trainer
passes the mask to ``training_forward`` (AuxK, Gao et al. 2024 Sec. A.2) and logs its mean.
With ``dead_min_rate`` r a latent that fires, but on fewer than a fraction r of the tokens
(estimated over the same window), is also passed to AuxK: a latent firing once every 60,000
tokens is never silent for a 1M-token window, yet reconstructs next to nothing (the wide
prefixes of a Matryoshka SAE on SynthSAEBench-16k held hundreds of these, docs/synthsae.md).

The rate is estimated from what the step reports, whether each latent fired at least once in a
batch of B tokens: an exponential moving average q_F of that indicator with weight
alpha = B / window per batch (a window's worth of batches), bias-corrected as in Adam
(q / (1 - (1 - alpha)^t) after t batches), against the batch-level threshold
p_min = 1 - (1 - r)^B, the chance that a latent firing independently at rate r fires in a
batch. It applies only once a whole window has been seen, like the silence rule.

Shapes: F latents.
"""

from __future__ import annotations

import torch


class DeadLatentTracker:
    """Tokens since each latent last fired.

    Two uses with two windows:

    - ``dead_mask()``, the latents AuxK and the dead-latent losses act on: silent for more than
      ``window`` tokens (Gao et al. 2024's 10M-token definition, as in sparsify);
    - ``dead_fraction()``, the logged metric: silent for more than
      ``min(window, tokens_seen // 2)`` tokens, so that a run shorter than ``window`` still
      reports latents that stopped firing (with the full window only, any run under 10M tokens
      would log 0 dead to the end).
    """

    def __init__(self, d_sae: int, window: int, device: torch.device | str = "cpu",
                 min_rate: float | None = None):
        self.window = window
        self.tokens_seen = 0
        self.tokens_since_fired_F = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.min_rate = min_rate
        # min_rate: EMA of "fired in the batch" (0 at the start, bias-corrected), its weights'
        # running product (1 - alpha)^t and the batch size it was measured at
        self.fired_ema_F = torch.zeros(d_sae, dtype=torch.float32, device=device) if min_rate else None
        self.ema_decay = 1.0
        self.batch_tokens = 0

    def update(self, fired_F: torch.Tensor, n_tokens: int) -> None:
        """``fired_F``: bool (F,), latents that fired at least once in the last ``n_tokens``."""
        self.tokens_seen += n_tokens
        self.tokens_since_fired_F += n_tokens
        self.tokens_since_fired_F.masked_fill_(fired_F.to(torch.bool), 0)  # no host sync
        if self.fired_ema_F is not None:
            alpha = min(1.0, n_tokens / self.window)
            self.fired_ema_F.lerp_(fired_F.to(self.fired_ema_F.dtype), alpha)
            self.ema_decay *= 1.0 - alpha
            self.batch_tokens = n_tokens

    def rare_mask(self) -> torch.Tensor | None:
        """Latents that fire below ``min_rate`` per token (None: no rate rule, or less than a
        window seen)."""
        if self.fired_ema_F is None or self.tokens_seen < self.window:
            return None
        p_min = 1.0 - (1.0 - self.min_rate) ** self.batch_tokens
        return self.fired_ema_F < p_min * (1.0 - self.ema_decay)  # q / (1 - decay) < p_min

    def dead_mask(self) -> torch.Tensor:
        silent = self.tokens_since_fired_F > self.window
        rare = self.rare_mask()
        return silent if rare is None else silent | rare

    def state_dict(self) -> dict:
        d = {"tokens_since_fired": self.tokens_since_fired_F.cpu(), "tokens_seen": self.tokens_seen}
        if self.fired_ema_F is not None:
            d |= {"fired_ema": self.fired_ema_F.cpu(), "ema_decay": self.ema_decay, "batch_tokens": self.batch_tokens}
        return d

    def load_state_dict(self, d: dict) -> None:
        self.tokens_since_fired_F.copy_(d["tokens_since_fired"])
        # older checkpoints lack the count: the longest silence is a lower bound (it only moves
        # the logged dead fraction's window)
        self.tokens_seen = int(d.get("tokens_seen", d["tokens_since_fired"].max()))
        if self.fired_ema_F is not None:
            if "fired_ema" not in d:
                raise ValueError("resume: the checkpoint has no firing-rate estimate (it was written without "
                                 "dead_min_rate); resume without it or start a new run")
            self.fired_ema_F.copy_(d["fired_ema"])
            self.ema_decay, self.batch_tokens = float(d["ema_decay"]), int(d["batch_tokens"])

    def report_window(self) -> int:
        """The window of `dead_fraction`: ``min(window, tokens_seen // 2)``."""
        return min(self.window, self.tokens_seen // 2)

    def reported_dead_mask(self) -> torch.Tensor:
        """The latents ``dead_fraction`` counts: silent for more than ``report_window()`` tokens."""
        return self.tokens_since_fired_F > self.report_window()

    def dead_fraction(self) -> float:
        return float(self.reported_dead_mask().float().mean())


__all__ = ["DeadLatentTracker"]
