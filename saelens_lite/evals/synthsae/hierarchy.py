"""The feature forest of SynthSAEBench (Chanin & Garriga-Alonso 2026, arXiv 2602.14687, Sec. 3;
SAELens docs/synth_sae_bench.md): full trees of fixed branching, children gated and scaled by
their parent, siblings mutually exclusive.

Shape legend: N (sample, parent) pairs with the parent on, S siblings per group (the branching
factor), R correlation rank.

Layout (breadth first): features 0..n_roots-1 are the roots; level 1 holds their children,
numbered from n_roots in root order (root r's children are n_roots + r S .. n_roots + (r+1) S - 1);
level l + 1 the children of level l in the same way, ``depth`` levels below the roots. The forest
uses n_roots (S^(depth+1) - 1) / (S - 1) features (level l is one contiguous block); the rest of
the features fire on their own.

Semantics, applied level by level so that a child sees its parent's final value:

    c_child <- c_child * (c_parent / mean_parent)   if c_parent > 0, else 0     (scaled gate)
    among the siblings still on, keep one chosen uniformly at random             (exclusion)

where c_child is the child's own draw (it fires by the copula of model.py, with its magnitude).
A child of a parent that is off is 0 whatever its draw, so the sampler draws children only
under parents that are on (``children_of``): the same distribution, since given the shared
correlation factor each feature's draw is independent of every other's.

Firing-rate compensation (the paper's ``compensate_probabilities``): a child of parent q fires
only when q does, and then only if it wins among the siblings that also fired, so its base
rate p_i is raised to
    p_i' = min(1, p_i / p_q * (1 + sum_{j in siblings, j != i} p_j / p_q))
(all p the base, uncompensated rates) so that its final rate is close to p_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Forest:
    """Where each level of the forest lives: level l is features [starts[l], starts[l+1])."""

    starts: tuple[int, ...]
    """Offsets of the levels (roots first) and the end of the last: depth + 2 numbers."""
    branching: int
    """S: children per parent."""

    @property
    def n_features(self) -> int:
        """Features in the forest (roots included)."""
        return self.starts[-1]

    @property
    def n_roots(self) -> int:
        return self.starts[1]

    def level_of(self, n_features: int) -> Tensor:
        """(G,) level of every feature (0 roots), -1 for the free features."""
        out = torch.full((n_features,), -1, dtype=torch.long)
        for lvl, (a, b) in enumerate(zip(self.starts[:-1], self.starts[1:])):
            out[a:b] = lvl
        return out

    def parent_of(self, n_features: int) -> Tensor:
        """(G,) parent of every feature, -1 for roots and free features."""
        out = torch.full((n_features,), -1, dtype=torch.long)
        S = self.branching
        for a, b, c in zip(self.starts[:-2], self.starts[1:-1], self.starts[2:]):
            out[b:c] = torch.arange(a, b).repeat_interleave(S)
        return out

    def children_of(self, q_N: Tensor) -> Tensor:
        """(N, S) the children of parents ``q_N`` (all at one level below the last)."""
        lvl = int(torch.searchsorted(torch.tensor(self.starts), q_N[:1], right=True)[0]) - 1 if len(q_N) else 0
        first = self.starts[lvl + 1] + (q_N - self.starts[lvl]) * self.branching
        return first[:, None] + torch.arange(self.branching)


def build_forest(n_roots: int, branching: int, depth: int) -> Forest:
    """The breadth-first forest of ``n_roots`` full trees (module docstring)."""
    starts = [0, n_roots]
    for _ in range(depth):
        starts.append(starts[-1] + (starts[-1] - starts[-2]) * branching)
    return Forest(tuple(starts), branching)


def forest_size(n_roots: int, branching: int, depth: int) -> int:
    """n_roots (S^(depth+1) - 1) / (S - 1): features a forest of full trees uses."""
    return n_roots * sum(branching**i for i in range(depth + 1))


def compensated_rates(p_G: Tensor, forest: Forest) -> Tensor:
    """Base rates raised for the gate and the exclusion (module docstring), clamped to 1."""
    p = p_G.double()
    out = p.clone()
    S = forest.branching
    for a, b, c in zip(forest.starts[:-2], forest.starts[1:-1], forest.starts[2:]):
        pq_Q1 = p[a:b, None]
        pk_QS = p[b:c].view(-1, S)
        others_QS = (pk_QS.sum(1, keepdim=True) - pk_QS).clamp_min(0)
        out[b:c] = (pk_QS / pq_Q1 * (1 + others_QS / pq_Q1)).reshape(-1)
    return out.clamp(max=1.0).to(p_G.dtype)


def one_per_group(on_NS: Tensor, g: torch.Generator) -> Tensor:
    """(N, S) bool: of the siblings on in each row, one chosen uniformly at random."""
    score_NS = torch.where(on_NS, torch.rand(on_NS.shape, generator=g), -1.0)
    keep_NS = torch.zeros_like(on_NS).scatter_(1, score_NS.argmax(1, keepdim=True), True)
    return keep_NS & on_NS


__all__ = ["Forest", "build_forest", "forest_size", "compensated_rates", "one_per_group"]
