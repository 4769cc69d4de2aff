"""Budgets and settings shared by every model of a comparison (see ``saelens_lite.compare``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from saelens_lite.util.validate import check_ints


@dataclass
class CompareConfig:
    """Budgets and settings shared by every model of a comparison."""

    latents: int = 128
    """Latent budget F per token / image (d_sae of the token-level models)."""
    k: int = 8
    """Active latents per token of the TopK / BatchTopK SAEs."""
    frontier_ks: list[int] = field(default_factory=lambda: [2, 4, 16, 32])
    """Extra TopK runs at these k, drawn as the L0-FVU frontier (empty: none)."""
    undercomplete: int | None = None
    """Width of the undercomplete dense autoencoder (None: d_in // 4)."""
    tokens: int = 200_000
    """Token (image) budget of every model."""
    batch_size: int = 256
    """Tokens (images) per step."""
    lr: float = 1e-3
    """Adam learning rate of every model (the schedule: 5% warm-up, linear decay over the last 20%)."""
    options: dict = field(default_factory=dict)
    """SAEConfig fields per architecture, e.g. {"relu": {"l1_coeff": 2.0}}."""
    probe_latents: int = 4
    """Latents per sparse probe."""
    held_out_class: int = 9
    """Images: the digit left out of training, used as the anomaly class."""
    ce_contexts: int = 8
    """Activations: contexts for CE loss recovered (0: skip; needs the cache's model)."""
    max_eval: int = 20_000
    """At most this many test tokens for the metrics."""
    seed: int = 0
    """Seed of the splits, inits and data order."""

    def __post_init__(self) -> None:
        check_ints(self, ("latents", "k", "tokens", "batch_size", "probe_latents", "max_eval"), minimum=1)
        if not self.lr > 0:
            raise ValueError(f"CompareConfig.lr={self.lr!r} is invalid; allowed: a number > 0")
        if self.k > self.latents or any(k > self.latents for k in self.frontier_ks):
            raise ValueError(f"CompareConfig.k / frontier_ks must be <= latents={self.latents}")

