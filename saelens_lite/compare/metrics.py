"""Metrics of one trained model of a comparison on held-out data (see ``saelens_lite.compare``):
reconstruction, sparsity, the interpretability proxies of ``evals.probes``, anomaly AUROC, and CE
loss recovered with the model spliced into its language model.

Shape legend: N examples, S sequence, D input width, F latents.
"""

from __future__ import annotations

import torch

from saelens_lite.compare.config import CompareConfig
from saelens_lite.compare.data import Dataset
from saelens_lite.evals.probes import auroc, selectivity, sparse_probe_accuracy
from saelens_lite.saes.baselines import VAE


@torch.no_grad()
def codes(model, x: torch.Tensor, data: Dataset, seq: torch.Tensor | None = None):
    """(codes (N, F'), reconstructions (N, D)) of test rows; 1d conv models read the contexts."""
    if seq is not None and not type(model).tokenwise:
        z, x_hat = model.encode(seq), model(seq)
        return z.reshape(-1, z.shape[-1]), x_hat.reshape(-1, x_hat.shape[-1])
    z = model.encode(x)
    return z.reshape(x.shape[0], -1), model.decode(z).reshape(x.shape[0], -1)


@torch.no_grad()
def evaluate_model(model, data: Dataset, cfg: CompareConfig) -> dict:
    """Reconstruction, sparsity and interpretability metrics of one trained model (see module doc)."""
    n_ctx = None
    if data.seq_test is not None:  # whole contexts, so the 1d conv model sees the same tokens
        n_ctx = max(1, min(len(data.seq_test), cfg.max_eval // data.seq_test.shape[1]))
        x, y, seq = data.seq_test[:n_ctx].reshape(-1, data.x_test.shape[1]), data.y_test[: n_ctx * data.seq_test.shape[1]], data.seq_test[:n_ctx]
    else:
        x, y, seq = data.x_test[: cfg.max_eval], data.y_test[: cfg.max_eval], None
    z, x_hat = codes(model, x, data, seq)
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
        _, xa_hat = codes(model, data.x_anomaly, data)
        err_a = (xa_hat - data.x_anomaly).pow(2).sum(-1)
        m["auroc"] = auroc(err_a.numpy(), err_N.numpy())
        if isinstance(model, VAE):
            g = torch.Generator().manual_seed(cfg.seed)
            m["auroc_elbo"] = auroc(-model.elbo(data.x_anomaly, generator=g).numpy(),
                                    -model.elbo(x, generator=g).numpy())
    return m


class SequenceAdapter:
    """Lets ``evals.downstream_metrics`` splice a 1d conv model: it calls
    ``decode(encode(act.reshape(-1, D)))``, so ``encode`` restores the (B, S, D) contexts,
    runs the model on positions 1.. (position 0 is BOS, which the cache and so training left
    out; it is passed through clean) and ``decode`` is the identity."""

    def __init__(self, model, seq_len: int):
        self.model, self.cfg, self.S = model, model.cfg, seq_len
        self.architecture = model.architecture

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
    from saelens_lite.lm.load import load_model

    meta = data.cache.meta
    lm = load_model(meta["model"], device="cpu")
    S = int(meta.get("context_size") or 128)
    last = data.cache.manifest.get("last_committed")
    contexts = list(eval_contexts(lm.tokenizer, meta.get("corpus", "builtin:pydocs"), S, cfg.ce_contexts,
                                  skip=int(last[0]) + 1 if last else 0,
                                  text_column=meta.get("text_column", "text")))
    res = {}
    for name, (model, _) in models.items():
        target = SequenceAdapter(model, S) if not type(model).tokenwise else model
        res[name] = downstream_metrics(target, lm, data.hook, contexts, batch_size=4, progress=False)
    return res

