"""The SynthSAEBench synthetic model (Chanin & Garriga-Alonso 2026, "SynthSAEBench: Evaluating
Sparse Autoencoders on Scalable Realistic Synthetic Data", arXiv 2602.14687; the 16k preset of
SAELens docs/synth_sae_bench.md), written from the published specification.

Shape legend: N samples, B batch, D hidden width, G true features, R correlation rank.

A sample is x = c @ W_true_GD + bias_D with sparse non-negative coefficients c_G:

1. Firing (a Gaussian copula with low-rank correlation): z = F_GR eps_R + sqrt(1 - |F_g|^2)
   eta_g with eps, eta standard normal, so every z_g is N(0, 1) and corr(z_g, z_h) = F_g . F_h;
   feature g fires when z_g > Phi^-1(1 - p_g), i.e. with probability exactly p_g. F has
   i.i.d. N(0, scale^2) entries (rows with |F_g|^2 > 0.99 rescaled to 0.99).
2. Rates: Zipfian, p_g ∝ (g + 1)^-exponent mapped linearly onto [p_min, p_max]; children of the
   hierarchy raised to compensate for their gate (``hierarchy.compensated_rates``).
3. Magnitude where it fired: ReLU(mu_g + sigma_g N(0, 1)), mu_g linear from ``mean_start``
   (most frequent) to ``mean_end``, sigma_g = |N(std_mean, std_std^2)| per feature.
4. The hierarchy (``hierarchy`` module): children gated and scaled by their parent,
   siblings mutually exclusive.
5. W_true_GD: random unit rows, then ``ortho_steps`` Adam steps (lr ``ortho_lr``) on
       L(E) = sum_{g != h} (e_g . e_h)^2 + G sum_g (|e_g|^2 - 1)^2,
   then renormalised. With Gram matrix K = E E^T and k = diag K the gradient is
       dL/dE = 4 (K - diag k) E + 4 G diag(k - 1) E = 4 [E (E^T E) - diag(k) E + G diag(k - 1) E],
   computed through the D x D matrix E^T E in O(G D^2) instead of the O(G^2 D) of forming K.
   ``bias_D``: a random direction of norm ``bias_norm``.

Every random draw comes from a torch.Generator seeded by (seed, purpose[, stream, batch]), so
batch b of a stream is the same tensor however the stream is entered (what resume needs), and
the training and held-out streams never share a seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from saelens_lite.evals.synthsae.hierarchy import (
    build_forest,
    compensated_rates,
    forest_size,
    one_per_group,
)
from saelens_lite.util.atomic import atomic_open
from saelens_lite.util.validate import check_ints

log = logging.getLogger(__name__)

TRAIN_STREAM, HELDOUT_STREAM = 0, 1
"""Stream ids: training batches and held-out (scoring) batches never share a generator seed."""


def generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from the integer tuple ``keys`` (numpy's SeedSequence hash)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


@dataclass
class SynthSAEConfig:
    """A SynthSAEBench model; the defaults are SynthSAEBench-16k (docs/synthsae.md)."""

    n_features: int = 16_384
    """G: ground-truth features."""
    d: int = 768
    """D: hidden width."""
    zipf_exponent: float = 0.5
    """Exponent of the Zipfian firing rates."""
    p_max: float = 0.4
    """Firing rate of the most frequent feature (before hierarchy compensation)."""
    p_min: float = 5e-4
    """Firing rate of the least frequent feature."""
    n_roots: int = 128
    """Roots of the hierarchy (0: no hierarchy)."""
    branching: int = 4
    """Children per parent."""
    depth: int = 3
    """Levels below the roots."""
    exclusive: bool = True
    """Siblings are mutually exclusive (the paper: all of them)."""
    scale_children: bool = True
    """Children scaled by parent / mean parent magnitude instead of a 0/1 gate."""
    compensate: bool = True
    """Raise children's rates to offset the gate and the exclusion."""
    corr_rank: int = 25
    """R: rank of the firing correlation (0: independent firing)."""
    corr_scale: float = 0.1
    """Std of the entries of the correlation factor F."""
    ortho_steps: int = 100
    """Adam steps of the dictionary orthogonalisation (0: random unit directions)."""
    ortho_lr: float = 3e-4
    """Learning rate of the orthogonalisation."""
    mean_start: float = 5.0
    """Mean magnitude of the most frequent feature (linear to mean_end)."""
    mean_end: float = 4.0
    """Mean magnitude of the least frequent feature."""
    std_mean: float = 0.5
    """Magnitude stds are |N(std_mean, std_std^2)| per feature."""
    std_std: float = 0.5
    """See std_mean."""
    bias_norm: float = 0.5
    """Norm of the constant bias added to every sample (0: none)."""
    seed: int = 42
    """Seed of everything fixed in the model (dictionary, correlation, stds)."""

    def __post_init__(self) -> None:
        check_ints(self, ("n_features", "d", "branching"), minimum=1)
        check_ints(self, ("n_roots", "depth", "corr_rank", "ortho_steps", "seed"), minimum=0)
        if not (0 < self.p_min < self.p_max <= 1):
            raise ValueError(f"SynthSAEConfig.p_min={self.p_min!r}, p_max={self.p_max!r}: need 0 < p_min < p_max <= 1")
        for name in ("zipf_exponent", "mean_start", "mean_end", "std_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SynthSAEConfig.{name}={getattr(self, name)!r}: must be > 0")
        for name in ("corr_scale", "ortho_lr", "std_mean", "bias_norm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"SynthSAEConfig.{name}={getattr(self, name)!r}: must be >= 0")
        if self.n_roots and self.branching < 2:
            raise ValueError(f"SynthSAEConfig.branching={self.branching!r}: must be >= 2 with a hierarchy")
        used = forest_size(self.n_roots, self.branching, self.depth) if self.n_roots else 0
        if used > self.n_features:
            raise ValueError(f"SynthSAEConfig.n_roots={self.n_roots!r}: a forest of branching {self.branching} "
                             f"and depth {self.depth} uses {used} features, more than n_features={self.n_features}")

    @classmethod
    def small(cls, **overrides) -> SynthSAEConfig:
        """A quick model of the same shape for tests: 1024 features in 64 dimensions."""
        base = {"n_features": 1024, "d": 64, "n_roots": 8, "p_min": 5e-3, "corr_rank": 4, "ortho_steps": 20,
                "ortho_lr": 3e-3}
        return cls(**(base | overrides))

    @classmethod
    def scaled(cls, n_features: int = 16_384, **overrides) -> SynthSAEConfig:
        """The 16k preset at ``n_features`` features: the roots scale with G (128 at 16,384),
        so the forest keeps its share of the features; none below 85 features."""
        if not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"n_features={n_features!r}: must be an integer >= 1")
        roots = n_features * 128 // 16_384
        if roots == 0 and n_features >= forest_size(1, cls.branching, cls.depth):
            roots = 1
        return cls(**({"n_features": n_features, "n_roots": roots} | overrides))

    def key(self) -> str:
        """A short hash of the fields (names the model's cache file)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def build(self, cache_dir: str | Path | None = None) -> SynthSAEModel:
        return SynthSAEModel(self, cache_dir=cache_dir)


def zipf_rates(cfg: SynthSAEConfig) -> Tensor:
    """(G,) base rates: (g + 1)^-a mapped linearly onto [p_min, p_max]."""
    r = (torch.arange(cfg.n_features, dtype=torch.float64) + 1) ** -cfg.zipf_exponent
    if cfg.n_features == 1:
        return torch.tensor([cfg.p_max], dtype=torch.float64)
    return cfg.p_min + (cfg.p_max - cfg.p_min) * (r - r[-1]) / (r[0] - r[-1])


def orthogonality_grad(E_GD: Tensor) -> Tensor:
    """dL/dE of the orthogonality loss (module docstring, item 5), through E^T E (D x D)."""
    k_G1 = (E_GD * E_GD).sum(1, keepdim=True)
    return 4 * (E_GD @ (E_GD.T @ E_GD) - k_G1 * E_GD + len(E_GD) * (k_G1 - 1) * E_GD)


def orthogonalize(E_GD: Tensor, steps: int, lr: float) -> Tensor:
    """Adam on the orthogonality loss from unit rows, then unit rows again."""
    E = torch.nn.functional.normalize(E_GD.clone(), dim=1)
    opt = torch.optim.Adam([E], lr=lr)
    for _ in range(steps):
        E.grad = orthogonality_grad(E)
        opt.step()
    return torch.nn.functional.normalize(E, dim=1)


class SynthSAEModel:
    """The fixed parts of a SynthSAEBench model and its streaming sampler."""

    def __init__(self, cfg: SynthSAEConfig, *, cache_dir: str | Path | None = None):
        self.cfg = cfg
        self.forest = build_forest(cfg.n_roots, cfg.branching, cfg.depth) if cfg.n_roots else None
        base = zipf_rates(cfg)
        p = compensated_rates(base, self.forest) if (self.forest and cfg.compensate) else base
        self.p_G = p.float()
        self.thresh_G = (math.sqrt(2) * torch.erfinv(1 - 2 * p)).float()  # Phi^-1(1 - p); -inf at p = 1
        self.mean_G = torch.linspace(cfg.mean_start, cfg.mean_end, cfg.n_features)
        self.std_G = (cfg.std_mean + cfg.std_std * torch.randn(cfg.n_features, generator=generator(cfg.seed, 1))).abs()
        self.F_GR = self._correlation_factor()
        self.noise_G = (1 - (self.F_GR**2).sum(1)).sqrt()
        self.W_true_GD, self.bias_D = self._dictionary(cache_dir)
        hier = torch.zeros(cfg.n_features, dtype=torch.bool)
        if self.forest is not None:
            hier[self.forest.n_roots:self.forest.n_features] = True
        self._top = (~hier).nonzero().squeeze(1)  # roots and free features: drawn densely
        self._F_top_RT = self.F_GR[self._top].T.contiguous()

    def _correlation_factor(self) -> Tensor:
        cfg = self.cfg
        F = cfg.corr_scale * torch.randn(cfg.n_features, cfg.corr_rank, generator=generator(cfg.seed, 2))
        sq = (F**2).sum(1, keepdim=True)
        return torch.where(sq > 0.99, F * (0.99 / sq.clamp_min(1e-12)).sqrt(), F)

    def _dictionary(self, cache_dir) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        path = Path(cache_dir) / f"synthsae-{cfg.key()}.pt" if cache_dir else None
        if path is not None and path.is_file():
            saved = torch.load(path)
            return saved["W_true_GD"], saved["bias_D"]
        g = generator(cfg.seed, 3)
        W = orthogonalize(torch.randn(cfg.n_features, cfg.d, generator=g), cfg.ortho_steps, cfg.ortho_lr)
        b = torch.randn(cfg.d, generator=g)
        b = b / b.norm() * cfg.bias_norm
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as f:
                torch.save({"W_true_GD": W, "bias_D": b}, f)
        return W, b

    # ------------------------------------------------------------------------------ sampling

    def coefficients(self, B: int, g: torch.Generator) -> Coeffs:
        """The nonzero coefficients of B fresh samples (items 1-4 of the module docstring).
        Roots and free features are drawn densely; children only under parents that are on
        (``hierarchy`` module docstring: the same distribution)."""
        cfg = self.cfg
        eps_BR = torch.randn(B, cfg.corr_rank, generator=g)
        top = self._top
        z_BT = torch.randn(B, len(top), generator=g) * self.noise_G[top]
        if cfg.corr_rank:
            z_BT = torch.addmm(z_BT, eps_BR, self._F_top_RT)
        b, j = (z_BT > self.thresh_G[top]).nonzero(as_tuple=True)
        f = top[j]
        v = self._magnitude(f, g)
        keep = v > 0
        rows, cols, vals = [b[keep]], [f[keep]], [v[keep]]
        if self.forest is not None:
            on = keep & (f < self.forest.n_roots)
            pb, pq, pv = b[on], f[on], v[on]
            for _ in range(cfg.depth):
                pb, pq, pv = self._children(pb, pq, pv, eps_BR, g)
                rows.append(pb)
                cols.append(pq)
                vals.append(pv)
        return Coeffs(torch.cat(rows), torch.cat(cols), torch.cat(vals), B, cfg.n_features)

    def _magnitude(self, f: Tensor, g: torch.Generator) -> Tensor:
        """ReLU(mu_f + sigma_f N(0, 1)), the magnitude of a firing (any shape of indices)."""
        return (self.mean_G[f] + self.std_G[f] * torch.randn(f.shape, generator=g)).relu()

    def _children(self, pb: Tensor, pq: Tensor, pv: Tensor, eps_BR: Tensor, g: torch.Generator):
        """(sample, feature, value) of the children that stay on under the parents (pb, pq)
        with values pv > 0: own draw, scaled gate, one per sibling group."""
        cfg = self.cfg
        kids_NS = self.forest.children_of(pq)
        z_NS = self.noise_G[kids_NS] * torch.randn(kids_NS.shape, generator=g)
        if cfg.corr_rank:
            z_NS = z_NS + torch.einsum("nsr,nr->ns", self.F_GR[kids_NS], eps_BR[pb])
        m_NS = self._magnitude(kids_NS, g)
        on_NS = (z_NS > self.thresh_G[kids_NS]) & (m_NS > 0)
        if cfg.scale_children:
            m_NS = m_NS * (pv / self.mean_G[pq])[:, None]
        if cfg.exclusive:
            on_NS = one_per_group(on_NS, g)
        n, s = on_NS.nonzero(as_tuple=True)
        return pb[n], kids_NS[n, s], m_NS[n, s]

    def embed(self, c: Coeffs) -> Tensor:
        """x_BD = c_BG @ W_true_GD + bias_D, summed over the nonzero coefficients only."""
        c_BG = torch.sparse_coo_tensor(torch.stack([c.rows, c.cols]), c.vals, (c.batch, c.n_features),
                                       check_invariants=False)
        return torch.sparse.mm(c_BG, self.W_true_GD) + self.bias_D

    def batch(self, B: int, *, stream: int, seed: int, index: int) -> tuple[Tensor, Coeffs]:
        """Batch ``index`` of the stream (stream, seed): (x_BD, its coefficients), the same
        tensors however the stream is entered."""
        c = self.coefficients(B, generator(self.cfg.seed, 10 + stream, seed, index))
        return self.embed(c), c

    def iter_batches(self, n: int, batch_size: int, *, stream: int = HELDOUT_STREAM, seed: int = 0):
        """(x_BD, Coeffs) for ``n`` samples in batches (the last one shorter); nothing is kept."""
        for i, start in enumerate(range(0, n, batch_size)):
            yield self.batch(min(batch_size, n - start), stream=stream, seed=seed, index=i)


class Coeffs(NamedTuple):
    """The nonzero coefficients of a batch, c_BG[rows, cols] = vals (COO, no duplicates)."""

    rows: Tensor
    """(nnz,) sample of each entry."""
    cols: Tensor
    """(nnz,) feature of each entry."""
    vals: Tensor
    """(nnz,) its value (> 0)."""
    batch: int
    """B."""
    n_features: int
    """G."""

    def dense(self) -> Tensor:
        """(B, G) float32."""
        c_BG = torch.zeros(self.batch, self.n_features)
        c_BG[self.rows, self.cols] = self.vals
        return c_BG

    def on(self) -> Tensor:
        """(B, G) bool: which features are on."""
        on_BG = torch.zeros(self.batch, self.n_features, dtype=torch.bool)
        on_BG[self.rows, self.cols] = True
        return on_BG


__all__ = ["SynthSAEConfig", "SynthSAEModel", "zipf_rates", "orthogonalize", "orthogonality_grad", "generator",
           "Coeffs", "TRAIN_STREAM", "HELDOUT_STREAM"]
