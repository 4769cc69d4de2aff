"""PNG plots of a comparison (``saelens_lite.compare``): the L0-FVU frontier, and for images
reconstructions of clean and corrupted inputs, VAE samples and anomaly-detection ROC curves.

Models are told apart by their class, not their row names: the k sweep of the frontier is the
models whose class uses ``cfg.k`` (``SAE.uses_k``) trained at a k other than the comparison's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saelens_lite.evals.probes import auroc, roc_curve
from saelens_lite.saes.baselines import VAE, corrupt


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def k_sweep(models: dict, cfg) -> set[str]:
    """Row names of the extra runs at another k (``CompareConfig.frontier_ks``): models whose class
    uses k, trained at a k other than their architecture's main run (``cfg.k`` or its option)."""
    def main_k(m) -> int:
        return cfg.options.get(m.architecture, {}).get("k", cfg.k)

    return {n for n, (m, _) in models.items() if type(m).uses_k and m.cfg.k != main_k(m)}


def frontier(rows: dict, path: Path, line: list[str] = (), label: str = "") -> Path:
    """L0 (log scale) against FVU, one point per model; the rows in ``line`` (the k sweep and its
    architecture's main run) joined as the frontier."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    topk = sorted((rows[n]["l0"], rows[n]["fvu"]) for n in line)
    if len(topk) > 1:
        ax.plot(*zip(*topk), "-", color="0.7", zorder=0, label=label)
    for name, r in rows.items():
        ax.scatter(r["l0"], r["fvu"], s=30)
        ax.annotate(name, (r["l0"], r["fvu"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("FVU (test)")
    ax.set_title("Sparsity vs reconstruction")
    ax.grid(alpha=0.3)
    if len(topk) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def reconstructions(models: dict, x_NP: torch.Tensor, side: int, path: Path, *, n: int = 8,
                    noise_std: float = 0.2, mask_prob: float = 0.25, seed: int = 0,
                    skip: set[str] = frozenset()) -> Path:
    """Rows: clean images, corrupted ones (Gaussian noise + masking), then per model its
    reconstruction of the clean and of the corrupted images (except the rows in ``skip``)."""
    plt = _plt()
    g = torch.Generator().manual_seed(seed)
    x = x_NP[:n]
    xc = corrupt(x, noise_std=noise_std, mask_prob=mask_prob, generator=g).clamp(0, 1)
    grid = [("clean", x), ("corrupted", xc)]
    for name, (m, _) in models.items():
        if name in skip:
            continue
        grid += [(f"{name}: clean", m(x).reshape(x.shape)), (f"{name}: corrupted", m(xc).reshape(x.shape))]
    fig, axes = plt.subplots(len(grid), n, figsize=(n * 0.8, len(grid) * 0.85))
    for i, (label, imgs) in enumerate(grid):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[j].reshape(side, side).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def vae_samples(vae, side: int, path: Path, *, n: int = 64, seed: int = 0) -> Path:
    plt = _plt()
    x = vae.sample(n, generator=torch.Generator().manual_seed(seed))
    cols = int(np.ceil(np.sqrt(n)))
    fig, axes = plt.subplots(cols, cols, figsize=(cols * 0.7, cols * 0.7))
    for i, ax in enumerate(axes.flat):
        if i < n:
            ax.imshow(x[i].reshape(side, side).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle("VAE samples: decode(z), z ~ N(0, I)", fontsize=9)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def roc_curves(models: dict, data, path: Path, *, seed: int = 0, skip: set[str] = frozenset()) -> Path:
    """Anomaly detection of the held-out class: score = reconstruction error (VAE also -ELBO);
    one curve per model except the rows in ``skip``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    x, xa = data.x_test, data.x_anomaly
    for name, (m, _) in models.items():
        if name in skip:
            continue
        scores = [(name, (m(xa).reshape(xa.shape) - xa).pow(2).sum(-1).numpy(),
                   (m(x).reshape(x.shape) - x).pow(2).sum(-1).numpy())]
        if isinstance(m, VAE):
            g = torch.Generator().manual_seed(seed)
            scores.append((f"{name} (-ELBO)", -m.elbo(xa, generator=g).numpy(), -m.elbo(x, generator=g).numpy()))
        for label, pos, neg in scores:
            fpr, tpr = roc_curve(pos, neg)
            ax.plot(fpr, tpr, label=f"{label}: {auroc(pos, neg):.3f}", lw=1.2)
    ax.plot([0, 1], [0, 1], ":", color="0.5")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Anomaly detection (held-out class), AUROC", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(models: dict, data, rows: dict, out: Path, cfg) -> list[str]:
    """Every plot that applies to the data kind; returns the file names."""
    sweep = k_sweep(models, cfg)
    classes = {type(models[n][0]) for n in sweep}
    line = [n for n, (m, _) in models.items() if type(m) in classes]
    label = ", ".join(c.architecture for c in classes) + ", k sweep"
    paths = [frontier(rows, out / "frontier.png", line, label)]
    if data.kind == "images":
        paths.append(reconstructions(models, data.x_test, data.image_side, out / "reconstructions.png",
                                     seed=cfg.seed, skip=sweep))
        vaes = [m for m, _ in models.values() if isinstance(m, VAE)]
        if vaes:
            paths.append(vae_samples(vaes[0], data.image_side, out / "vae_samples.png", seed=cfg.seed))
        paths.append(roc_curves(models, data, out / "roc.png", seed=cfg.seed, skip=sweep))
    return [p.name for p in paths]
