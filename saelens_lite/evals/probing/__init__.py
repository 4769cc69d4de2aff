"""Sparse probing on the SAE-Probes datasets (Kantamneni et al. 2025, "Are Sparse Autoencoders
Useful? A Case Study in Sparse Probing"): do logistic probes on k of an autoencoder's latents
match a dense probe on the activations they encode?

``data`` (the labelled datasets, the binary filter, the split), ``acts`` (pooled activations of a
hook, cached), ``probes`` (dense, k-sparse and all-latent probes), ``splits`` (the fixed split and the changed
training splits of the data-scarce, class-imbalance and label-noise settings), ``run`` (the benchmark,
resumable), ``report`` (tables, JSON, the plots), ``corpus`` (the training-split texts as a corpus
for an on-domain SAE). ``saelens-lite bench probing`` and ``bench probing-corpus`` are the
command lines.
"""

from saelens_lite.evals.probing.probes import ProbeConfig, fit_probe, mean_diff_order, sparse_probes
from saelens_lite.evals.probing.run import ProbingConfig, run_probing

__all__ = ["ProbeConfig", "ProbingConfig", "fit_probe", "mean_diff_order", "run_probing", "sparse_probes"]
