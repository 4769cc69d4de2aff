"""Dead latents: tokens since each latent last fired.

A latent that has not fired for more than ``dead_window_tokens`` tokens is dead; the trainer
passes the mask to ``training_forward`` (AuxK, Gao et al. 2024 Sec. A.2) and logs its mean.

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

    def __init__(self, d_sae: int, window: int, device: torch.device | str = "cpu"):
        self.window = window
        self.tokens_seen = 0
        self.tokens_since_fired_F = torch.zeros(d_sae, dtype=torch.long, device=device)

    def update(self, fired_F: torch.Tensor, n_tokens: int) -> None:
        """``fired_F``: bool (F,), latents that fired at least once in the last ``n_tokens``."""
        self.tokens_seen += n_tokens
        self.tokens_since_fired_F += n_tokens
        self.tokens_since_fired_F.masked_fill_(fired_F.to(torch.bool), 0)  # no host sync

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired_F > self.window

    def report_window(self) -> int:
        """The window of `dead_fraction`: ``min(window, tokens_seen // 2)``."""
        return min(self.window, self.tokens_seen // 2)

    def reported_dead_mask(self) -> torch.Tensor:
        """The latents ``dead_fraction`` counts: silent for more than ``report_window()`` tokens."""
        return self.tokens_since_fired_F > self.report_window()

    def dead_fraction(self) -> float:
        return float(self.reported_dead_mask().float().mean())


__all__ = ["DeadLatentTracker"]
