"""Hierarchical ground truth: parent features whose children fire only with them, and feature
absorption measured exactly (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka Sparse Autoencoders", toy model; Chanin et al. 2024, "A is for Absorption").

Shape legend: N tokens, B batch, D width, P parents, C children per parent, G = P (1 + C) true
features, F SAE latents.

Generator: each parent p fires on its own with probability ``parent_rate``; when it fires,
with probability ``child_rate`` exactly one of its C children fires too (uniformly chosen:
children are mutually exclusive, as in the Matryoshka paper's toy model), never otherwise.
Every firing has magnitude m ~ Uniform(1 - s, 1 + s); token n is x_n = sum_g c_ng W_true_g with
G random unit directions (features 0..P-1 the parents, then parent p's children at
P + p C .. P + (p + 1) C - 1).

Absorption (exact, since the truth is known): the parent latent l_p is the latent whose decoder
row has the largest cosine with W_true_p; over the tokens where p and one of its children fire,
    absorption = #(l_p silent) / #(tokens with p and a child on),
pooled over parents; ``absorption_control`` is the same rate on tokens where p fires alone.
An SAE that absorbed the parent into its children (a child latent that writes
W_true_p + W_true_child) leaves l_p silent exactly when a child is on: absorption near 1,
control near 0. A faithful SAE gets 0 for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelens_lite.evals.synthetic import max_cosine
from saelens_lite.util.validate import check_ints


@dataclass
class HierarchyConfig:
    """A toy model of parent and child features."""

    d: int = 64
    """Width D of the activations."""
    n_parents: int = 16
    """Number P of parent features."""
    children: int = 4
    """Children C per parent (mutually exclusive: at most one fires with its parent)."""
    parent_rate: float = 0.15
    """Probability that a parent fires on a token (independently of the other parents)."""
    child_rate: float = 0.8
    """Probability, given that its parent fires, that one of the children fires too."""
    magnitude_spread: float = 0.5
    """Per-firing magnitude ~ Uniform(1 - s, 1 + s); must be in [0, 1)."""
    noise_std: float = 0.0
    """Std of isotropic Gaussian noise added to every token."""
    seed: int = 0
    """Seed of the dictionary (token draws take their own seed)."""

    def __post_init__(self) -> None:
        check_ints(self, ("d", "n_parents", "children"), minimum=1)
        for name in ("parent_rate", "child_rate"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"HierarchyConfig.{name}={getattr(self, name)!r}: must be in (0, 1]")
        if not 0 <= self.magnitude_spread < 1:
            raise ValueError(f"HierarchyConfig.magnitude_spread={self.magnitude_spread!r}: must be in [0, 1)")
        if not self.noise_std >= 0:
            raise ValueError(f"HierarchyConfig.noise_std={self.noise_std!r}: must be >= 0")

    @property
    def n_features(self) -> int:
        """G = P (1 + C) true features."""
        return self.n_parents * (1 + self.children)

    @property
    def mean_active(self) -> float:
        """Expected features on per token: P parent_rate (1 + child_rate)."""
        return self.n_parents * self.parent_rate * (1 + self.child_rate)

    def build(self) -> HierarchicalData:
        return HierarchicalData(self)


class HierarchicalData:
    """The fixed dictionary of a hierarchical toy model and a token sampler (the interface of
    ``evals.synthetic.SyntheticData``: ``W_true_GD``, ``sample``, ``extra_scores``)."""

    columns = (("absorption", "{:.1%}"), ("absorption_control", "{:.1%}"),
               ("parents_recovered", "{:.1%}"), ("children_recovered", "{:.1%}"))
    """Scores beyond the generic ones, for ``synthetic.format_table``."""

    def __init__(self, cfg: HierarchyConfig):
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        W = torch.randn(cfg.n_features, cfg.d, generator=g, dtype=torch.float64)
        self.W_true_GD = (W / W.norm(dim=1, keepdim=True)).float()

    def sample(self, n: int, *, seed: int = 1) -> tuple[Tensor, Tensor]:
        """(x_ND float32, c_NG float32 true coefficients; nonzero = feature on)."""
        cfg = self.cfg
        P, C = cfg.n_parents, cfg.children
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + seed)
        parent_NP = torch.rand(n, P, generator=g) < cfg.parent_rate
        child_NP = parent_NP & (torch.rand(n, P, generator=g) < cfg.child_rate)
        which_NP = torch.randint(C, (n, P), generator=g)
        on_NPC = child_NP[..., None] & (which_NP[..., None] == torch.arange(C))
        on_NG = torch.cat([parent_NP, on_NPC.reshape(n, P * C)], dim=1)
        m_NG = 1 + cfg.magnitude_spread * (2 * torch.rand(n, cfg.n_features, generator=g) - 1)
        c_NG = on_NG * m_NG
        x_ND = c_NG @ self.W_true_GD
        if cfg.noise_std:
            x_ND = x_ND + cfg.noise_std * torch.randn(n, cfg.d, generator=g)
        return x_ND, c_NG

    @torch.no_grad()
    def extra_scores(self, sae, x_ND: Tensor, c_NG: Tensor, threshold: float = 0.9) -> dict[str, float]:
        """Absorption and control rates (module docstring) and the recovered fractions of parents
        and children (max decoder cosine > threshold) on the tokens given."""
        P = self.cfg.n_parents
        cos_G = max_cosine(self.W_true_GD, sae.W_dec.detach())
        latent_P = parent_latents(self.W_true_GD[:P], sae.W_dec.detach())
        fired = [sae.encode(x_ND[i:i + 4096])[:, latent_P] != 0 for i in range(0, len(x_ND), 4096)]
        on_NG = c_NG != 0
        child_NP = on_NG[:, P:].view(len(x_ND), P, -1).any(-1)
        absorbed, control = absorption_rates(torch.cat(fired), on_NG[:, :P], child_NP)
        return {"absorption": absorbed, "absorption_control": control,
                "parents_recovered": float((cos_G[:P] > threshold).double().mean()),
                "children_recovered": float((cos_G[P:] > threshold).double().mean())}


def parent_latents(W_parent_PD: Tensor, W_dec_FD: Tensor) -> Tensor:
    """(P,) for each parent the latent whose decoder row has the largest cosine with it."""
    a = torch.nn.functional.normalize(W_parent_PD.double(), dim=1)
    b = torch.nn.functional.normalize(W_dec_FD.double(), dim=1)
    return (a @ b.T).argmax(dim=1)


def absorption_rates(fired_NP: Tensor, parent_NP: Tensor, child_NP: Tensor) -> tuple[float, float]:
    """(absorption, control), pooled over parents: the fraction of (token, parent) pairs with the
    parent and a child on where the parent latent is silent, and the same fraction where the
    parent is on alone (nan when there is no such pair). All arguments bool (N, P)."""
    silent = ~fired_NP
    with_child, alone = parent_NP & child_NP, parent_NP & ~child_NP

    def rate(mask_NP: Tensor) -> float:
        return float((silent & mask_NP).sum() / mask_NP.sum()) if mask_NP.any() else float("nan")

    return rate(with_child), rate(alone)


__all__ = ["HierarchyConfig", "HierarchicalData", "parent_latents", "absorption_rates"]
