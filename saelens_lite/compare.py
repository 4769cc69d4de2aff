"""Every autoencoder type under one budget: what does sparsity buy?

``compare(data, out_dir, config)`` trains one model per registered architecture (the SAEs and the
baselines; ``dense`` twice: an undercomplete bottleneck and one as wide as the SAEs) with

* the same latent budget F per token (per image): ``d_sae = F`` for token-level models; the 1d
  convolutional model has F channels per token, the 2d one F / (H W / 16) channels on an
  (H/4, W/4) grid, i.e. again F numbers per image;
* the same token budget, batch size, Adam, lr schedule (``training.trainer.lr_at``) and input
  normalisation (E||c x|| = sqrt(D)).

Token-level models go through ``training.train`` unchanged. The 1d convolutional model needs
whole contexts (B, S, D), which the token-level trainer does not feed, so :func:`train_sequences`
runs the same loop on contexts rebuilt from the cache's (context, position) ids, with the same
schedule functions; its token budget counts every token of every context.

Then, on held-out data, the table reports MSE (per element), FVU, L0, dead latents (never
non-zero on the test set; for the VAE, inactive units: Var_x E_q[z_f] < 0.01, Burda et al. 2016),
interpretability proxies, and per data kind:

* ``selectivity``: mean over live latents of max_c sum_{n in c} |z_nf| / sum_n |z_nf|: the share
  of a latent's activation mass on its favourite class (digit, or token id for activations);
* ``probe_acc``: sparse probing: per class (one-vs-rest), the ``probe_latents`` latents with the
  largest standardised mean difference feed a logistic regression; balanced accuracy on a
  held-out half, averaged over classes (Gurnee et al. 2023 style, k small);
* images: ``auroc``: anomaly detection of a digit class never seen in training, scored by
  reconstruction error (and ``auroc_elbo`` by -ELBO for the VAE);
* activations: ``ce_loss_recovered`` with the model spliced (``evals.downstream_metrics``), when
  ``ce_contexts > 0`` and the cache records its model.

Shape legend: N examples, B batch, S sequence, D input width, F latents.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from saelens_lite._validate import check_ints

log = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------------------ data
@dataclass
class Dataset:
    """Train / test rows (N, D) with labels, and for activations the test contexts (N, S, D)."""

    kind: str  # "images" | "activations"
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_test: np.ndarray
    seq_train: torch.Tensor | None = None
    seq_test: torch.Tensor | None = None
    x_anomaly: torch.Tensor | None = None
    image_side: int | None = None
    cache: object = None
    hook: str = ""
    name: str = ""


def load_images(name: str = "digits", *, held_out_class: int = 9, seed: int = 0) -> Dataset:
    """digits: scikit-learn's 8x8 digits (ships offline), pixels scaled to [0, 1]; mnist:
    torchvision's MNIST (downloads; needs torchvision and a connection). ``held_out_class`` is
    removed from training and serves as the anomaly set; 30% of the rest is the test set."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data.astype(np.float32) / 16.0, d.target
    elif name == "mnist":  # code path only: not exercised offline
        from torchvision.datasets import MNIST

        ds = MNIST(str(Path.home() / ".cache" / "saelens_lite" / "mnist"), train=True, download=True)
        x, y = ds.data.numpy().reshape(len(ds), -1).astype(np.float32) / 255.0, ds.targets.numpy()
    else:
        raise ValueError(f"images={name!r}: choose digits or mnist")
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(y != held_out_class)
    rng.shuffle(normal)
    n_test = int(0.3 * len(normal))
    te, tr = normal[:n_test], normal[n_test:]
    t = torch.from_numpy
    return Dataset("images", t(x[tr]), t(x[te]), y[te], x_anomaly=t(x[y == held_out_class]),
                   image_side=math.isqrt(x.shape[1]), name=name)


def load_activations(path, hook: str | None = None, *, test_fraction: float = 0.1) -> Dataset:
    """Rows of one hook of an ActivationCache, split by context (the last ``test_fraction`` of
    contexts are the test set), plus the contexts rebuilt as (n_contexts, S, D) sequences from
    the cache's context / position ids (contexts with missing positions are dropped)."""
    from saelens_lite.cache import ActivationCache

    cache = path if isinstance(path, ActivationCache) else ActivationCache(path)
    hook = hook or cache.hook_names[0]
    acts = np.asarray(cache.activations(hook), dtype=np.float32)
    ctx, pos, tok = (np.asarray(a) for a in (cache.context_ids, cache.positions, cache.token_ids))
    order = np.lexsort((pos, ctx))
    ids, start, count = np.unique(ctx[order], return_index=True, return_counts=True)
    S = int(np.bincount(count).argmax())  # the usual context length after exclusions
    full = [(s, c) for s, c in zip(start, count)
            if c == S and np.all(np.diff(pos[order[s:s + S]]) == 1)]
    rows_CS = np.stack([order[s:s + S] for s, _ in full])  # row indices, one context per line
    n_test = max(1, int(test_fraction * len(rows_CS)))
    tr, te = rows_CS[:-n_test], rows_CS[-n_test:]
    t = torch.from_numpy
    return Dataset("activations", t(acts[tr.reshape(-1)]), t(acts[te.reshape(-1)]), tok[te.reshape(-1)],
                   seq_train=t(acts[tr]), seq_test=t(acts[te]), cache=cache, hook=hook,
                   name=str(cache.meta.get("model", "")))


# ------------------------------------------------------------------------------------ models
def model_specs(data: Dataset, cfg: CompareConfig) -> list[tuple[str, dict]]:
    """(row name, SAEConfig overrides) for every registered architecture under the budget."""
    from saelens_lite.saes import REGISTRY

    D, F_ = data.x_train.shape[1], cfg.latents
    specs = []
    for arch in sorted(REGISTRY):
        opts = {"architecture": arch, "d_sae": F_, "k": cfg.k} | cfg.options.get(arch, {})
        if arch == "dense":
            under = cfg.undercomplete or max(D // 4, 1)
            specs.append((f"dense-under (F={under})", opts | {"d_sae": under, "k": 1}))
            specs.append((f"dense-over (F={F_})", opts))
        elif arch == "conv":
            if data.kind == "images":
                cells = (data.image_side // 4) ** 2
                specs.append(("conv-2d", opts | {"conv_kind": "2d", "d_sae": max(F_ // cells, 1), "k": 1}))
            else:
                specs.append(("conv-1d", opts | {"conv_kind": "1d", "k": 1}))
        else:
            specs.append((arch, opts))
    specs += [(f"topk k={k}", {"architecture": "topk", "d_sae": F_, "k": k})
              for k in cfg.frontier_ks if k != cfg.k]
    return specs


def _train_config(cfg: CompareConfig, opts: dict, out: Path):
    from saelens_lite.training import TrainConfig

    steps = cfg.tokens // cfg.batch_size
    sae_options = {k: v for k, v in opts.items() if k not in ("architecture", "d_sae", "k")}
    return TrainConfig(architecture=opts["architecture"], latents=opts["d_sae"], k=opts["k"],
                       sae_options=sae_options, lr=cfg.lr, batch_size=cfg.batch_size, tokens=cfg.tokens,
                       warmup_steps=max(1, steps // 20), decay="linear", decay_fraction=0.2,
                       b_dec_init="mean", init_sample_tokens=min(16_384, cfg.tokens),
                       dead_window_tokens=max(cfg.tokens // 10, cfg.batch_size), checkpoint_every=0,
                       log_every=max(1, steps // 10), progress=False, device="cpu", seed=cfg.seed,
                       out_dir=str(out))


def train_sequences(config, seq_NSD: torch.Tensor):
    """The trainer's loop (trainer.py) for models that need whole contexts: each step takes
    ``batch_size // S`` random contexts (B, S, D), with the same normalisation scale, b_dec init,
    Adam, ``lr_at`` schedule, gradient clipping and save format. Returns the trained model (input
    scale folded in) and saves it to ``config.out_dir/model``."""
    from saelens_lite.training.trainer import build_sae, lr_at, make_adam, normalization_scale

    torch.manual_seed(config.seed)
    N, S, D = seq_NSD.shape
    g = torch.Generator().manual_seed(config.seed)
    sample = seq_NSD.reshape(-1, D)[torch.randperm(N * S, generator=g)[: config.init_sample_tokens]]
    scale = normalization_scale(sample)
    sae = build_sae(config, D)
    sae.init_from_data_(sample * scale)
    base_lr = config.lr_for(sae.cfg.d_sae)
    # as train() makes it for the other models (equal footing)
    opt = make_adam(sae.parameters(), base_lr, tuple(config.betas), torch.device("cpu"))
    per_step = max(1, config.batch_size // S)
    sae.train()
    for step in range(config.steps):
        idx = torch.randint(0, N, (per_step,), generator=g)
        out = sae.training_forward(seq_NSD[idx] * scale)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.before_optimizer_step_()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), config.grad_clip)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config, base_lr)
        opt.step()
        sae.after_optimizer_step_()
    sae.eval()
    sae.fold_input_scale_(scale)
    sae.save(Path(config.out_dir) / "model")
    return sae


def train_all(data: Dataset, cfg: CompareConfig, out_dir: Path) -> dict:
    """{row name: (trained model, seconds)}."""
    from saelens_lite.training import train

    models = {}
    for name, opts in model_specs(data, cfg):
        tc = _train_config(cfg, opts, out_dir / "models" / _slug(name))
        t0 = time.perf_counter()
        if opts["architecture"] == "conv" and opts["conv_kind"] == "1d":
            sae = train_sequences(tc, data.seq_train)
        else:
            sae = train(tc, data.x_train)
        models[name] = (sae.eval(), time.perf_counter() - t0)
        log.info("trained %s in %.1fs", name, models[name][1])
    return models


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")


# ------------------------------------------------------------------------------------ metrics
def auroc(scores_pos, scores_neg) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + P(tie) / 2 (Mann-Whitney U / n+ n-)."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(scores_pos, np.float64), np.asarray(scores_neg, np.float64)
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_curve(scores_pos, scores_neg) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) over every threshold, from (0, 0) to (1, 1)."""
    s = np.concatenate([scores_pos, scores_neg])
    lab = np.concatenate([np.ones(len(scores_pos)), np.zeros(len(scores_neg))])
    o = np.argsort(-s, kind="stable")
    s, lab = s[o], lab[o]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each run of equal scores
    tp, fp = np.cumsum(lab)[last], np.cumsum(1 - lab)[last]
    return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def selectivity(z_NF: np.ndarray, y_N: np.ndarray) -> float:
    """Mean over live latents of the largest share of |activation| mass on one label."""
    a = np.abs(z_NF.astype(np.float64))
    labels, inv = np.unique(y_N, return_inverse=True)
    mass_CF = np.zeros((len(labels), a.shape[1]))
    np.add.at(mass_CF, inv, a)
    tot_F = mass_CF.sum(0)
    live = tot_F > 0
    return float((mass_CF[:, live].max(0) / tot_F[live]).mean()) if live.any() else float("nan")


def sparse_probe_accuracy(z_NF: np.ndarray, y_N: np.ndarray, *, k: int = 4, n_classes: int = 10,
                          seed: int = 0) -> float:
    """Balanced accuracy of one-vs-rest logistic probes on the k latents with the largest
    |mean_in - mean_out| / std (chosen and fitted on one half, scored on the other), averaged over
    the ``n_classes`` most frequent labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y_N))
    a, b = perm[: len(perm) // 2], perm[len(perm) // 2:]
    labels, counts = np.unique(y_N, return_counts=True)
    accs = []
    for c in labels[np.argsort(-counts)][:n_classes]:
        yy = y_N == c
        if yy[a].sum() < 2 or (~yy[a]).sum() < 2 or yy[b].sum() < 1:
            continue
        za = z_NF[a]
        score = np.abs(za[yy[a]].mean(0) - za[~yy[a]].mean(0)) / (za.std(0) + 1e-8)
        top = np.argsort(-score)[:k]
        clf = LogisticRegression(class_weight="balanced", max_iter=500).fit(za[:, top], yy[a])
        accs.append(balanced_accuracy_score(yy[b], clf.predict(z_NF[b][:, top])))
    return float(np.mean(accs)) if accs else float("nan")


@torch.no_grad()
def _codes(model, x: torch.Tensor, data: Dataset, seq: torch.Tensor | None = None):
    """(codes (N, F'), reconstructions (N, D)) of test rows; 1d conv models read the contexts."""
    if seq is not None and getattr(model.cfg, "conv_kind", "") == "1d" and model.architecture == "conv":
        z, x_hat = model.encode(seq), model(seq)
        return z.reshape(-1, z.shape[-1]), x_hat.reshape(-1, x_hat.shape[-1])
    z = model.encode(x)
    return z.reshape(x.shape[0], -1), model.decode(z).reshape(x.shape[0], -1)


@torch.no_grad()
def evaluate_model(model, data: Dataset, cfg: CompareConfig) -> dict:
    """Reconstruction, sparsity and interpretability metrics of one trained model (see module doc)."""
    from saelens_lite.baselines import VAE

    n_ctx = None
    if data.seq_test is not None:  # whole contexts, so the 1d conv model sees the same tokens
        n_ctx = max(1, min(len(data.seq_test), cfg.max_eval // data.seq_test.shape[1]))
        x, y, seq = data.seq_test[:n_ctx].reshape(-1, data.x_test.shape[1]), data.y_test[: n_ctx * data.seq_test.shape[1]], data.seq_test[:n_ctx]
    else:
        x, y, seq = data.x_test[: cfg.max_eval], data.y_test[: cfg.max_eval], None
    z, x_hat = _codes(model, x, data, seq)
    err_N = (x_hat - x).pow(2).sum(-1)
    z_np = z.numpy()
    if isinstance(model, VAE):
        dead = float((z.var(0) < 0.01).float().mean())
        l0 = float(z.shape[1])
    else:
        dead = float(((z != 0).sum(0) == 0).float().mean())
        l0 = float((z != 0).sum(-1).float().mean())
    m = {"latents": int(z.shape[1]), "l0": l0, "mse": float(err_N.mean()) / x.shape[1],
         "fvu": float(err_N.sum() / (x - x.mean(0)).pow(2).sum()), "dead_fraction": dead,
         "selectivity": selectivity(z_np, y),
         "probe_acc": sparse_probe_accuracy(z_np, y, k=cfg.probe_latents, seed=cfg.seed)}
    if data.x_anomaly is not None:
        _, xa_hat = _codes(model, data.x_anomaly, data)
        err_a = (xa_hat - data.x_anomaly).pow(2).sum(-1)
        m["auroc"] = auroc(err_a.numpy(), err_N.numpy())
        if isinstance(model, VAE):
            g = torch.Generator().manual_seed(cfg.seed)
            m["auroc_elbo"] = auroc(-model.elbo(data.x_anomaly, generator=g).numpy(),
                                    -model.elbo(x, generator=g).numpy())
    return m


class _SequenceAdapter:
    """Lets ``evals.downstream_metrics`` splice a 1d conv model: it calls
    ``decode(encode(act.reshape(-1, D)))``, so ``encode`` restores the (B, S, D) contexts,
    runs the model on positions 1.. (position 0 is BOS, which the cache and so training left
    out; it is passed through clean) and ``decode`` is the identity."""

    def __init__(self, model, seq_len: int):
        self.model, self.cfg, self.S = model, model.cfg, seq_len
        self.architecture = "conv"

    def encode(self, x_ND: torch.Tensor) -> torch.Tensor:
        x_BSD = x_ND.view(-1, self.S, x_ND.shape[-1])
        out = x_BSD.clone()
        out[:, 1:] = self.model(x_BSD[:, 1:])
        return out.reshape(x_ND.shape)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def eval(self):
        return self


def ce_metrics(models: dict, data: Dataset, cfg: CompareConfig) -> dict:
    """{name: downstream metrics} with each model spliced at the cache's hook."""
    from saelens_lite.evals import downstream_metrics, eval_contexts
    from saelens_lite.models import load_model

    meta = data.cache.meta
    lm = load_model(meta["model"], device="cpu")
    S = int(meta.get("context_size") or 128)
    last = data.cache.manifest.get("last_committed")
    contexts = list(eval_contexts(lm.tokenizer, meta.get("corpus", "builtin:pydocs"), S, cfg.ce_contexts,
                                  skip=int(last[0]) + 1 if last else 0,
                                  text_column=meta.get("text_column", "text")))
    res = {}
    for name, (model, _) in models.items():
        target = _SequenceAdapter(model, S) if model.architecture == "conv" else model
        res[name] = downstream_metrics(target, lm, data.hook, contexts, batch_size=4, progress=False)
    return res


# ------------------------------------------------------------------------------------ driver
COLUMNS = ["latents", "l0", "mse", "fvu", "dead_fraction", "selectivity", "probe_acc", "auroc",
           "auroc_elbo", "ce_loss_recovered", "train_s"]


def format_table(rows: dict) -> str:
    """Markdown table of the result rows (missing metrics as '-')."""
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows.values())]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else
                         str(v) if isinstance(v, int) else f"{v:.4g}" if c != "train_s" else f"{v:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(out_dir, *, activations=None, hook: str | None = None, images: str | None = None,
            config: CompareConfig | None = None) -> dict:
    """Train and evaluate every type on ``activations`` (a cache folder / ActivationCache) or
    ``images`` ("digits" | "mnist"); write ``results.json``, ``results.md`` and the PNG plots to
    ``out_dir``. Returns {"config", "data", "rows": {name: metrics}}."""
    from saelens_lite import compare_plots

    if (activations is None) == (images is None):
        raise ValueError("compare: give exactly one of activations= or images=")
    cfg = config or CompareConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data = (load_images(images, held_out_class=cfg.held_out_class, seed=cfg.seed) if images
            else load_activations(activations, hook))
    models = train_all(data, cfg, out)
    rows = {name: evaluate_model(m, data, cfg) | {"train_s": secs} for name, (m, secs) in models.items()}
    if data.kind == "activations" and cfg.ce_contexts and data.cache.meta.get("model"):
        for name, ce in ce_metrics(models, data, cfg).items():
            rows[name]["ce_loss_recovered"] = ce.get("ce_loss_recovered")
            rows[name]["ce_loss_sae"] = ce.get("ce_loss_sae")
            rows[name]["ce_loss_clean"] = ce.get("ce_loss_clean")
    plots = compare_plots.write_plots(models, data, rows, out, cfg)
    result = {"config": dataclasses.asdict(cfg), "data": {"kind": data.kind, "name": data.name,
              "hook": data.hook, "d_in": int(data.x_train.shape[1]), "n_train": int(len(data.x_train)),
              "n_test": int(len(data.x_test))}, "rows": rows, "plots": plots}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "results.md").write_text(format_table(rows))
    return result


__all__ = ["CompareConfig", "Dataset", "compare", "load_images", "load_activations", "model_specs",
           "train_all", "train_sequences", "evaluate_model", "auroc", "roc_curve", "selectivity",
           "sparse_probe_accuracy", "format_table", "ce_metrics"]
