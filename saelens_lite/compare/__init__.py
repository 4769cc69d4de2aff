"""Every autoencoder type under one budget: what does sparsity buy?

``compare(data, out_dir, config)`` trains one model per registered architecture (the SAEs and the
baselines; ``dense`` twice: an undercomplete bottleneck and one as wide as the SAEs) with

* the same latent budget F per token (per image): ``d_sae = F`` for token-level models; the 1d
  convolutional model has F channels per token, the 2d one F / (H W / 16) channels on an
  (H/4, W/4) grid, i.e. again F numbers per image;
* the same token budget, batch size, Adam, lr schedule (``training.schedules.lr_at``) and input
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

Modules: ``config`` (CompareConfig), ``data`` (images / cache rows and contexts), ``train`` (the
model list and the training loops), ``metrics`` (one model's metrics), ``plots`` (PNGs), ``run``
(the driver, :func:`compare`); the probe and ROC helpers are ``saelens_lite.evals.probes``.

Shape legend: N examples, B batch, S sequence, D input width, F latents.
"""

from saelens_lite.compare.config import CompareConfig
from saelens_lite.compare.data import Dataset, load_activations, load_images
from saelens_lite.compare.metrics import ce_metrics, evaluate_model
from saelens_lite.compare.run import COLUMNS, compare, format_table
from saelens_lite.compare.train import model_specs, train_all, train_sequences
from saelens_lite.evals.probes import auroc, roc_curve, selectivity, sparse_probe_accuracy

__all__ = ["CompareConfig", "Dataset", "compare", "load_images", "load_activations", "model_specs",
           "train_all", "train_sequences", "evaluate_model", "auroc", "roc_curve", "selectivity",
           "sparse_probe_accuracy", "format_table", "ce_metrics", "COLUMNS"]
