"""Settings of an explanation run: which examples each feature gets and how they are split."""

from __future__ import annotations

from dataclasses import dataclass

from saelens_lite.util.validate import check_ints


@dataclass
class ExplainConfig:
    """How examples are gathered, split and batched. The split rule is in
    :mod:`saelens_lite.explain.examples`; the prompts and scoring rules in docs/explanations.md."""

    n_explain: int = 10
    """Top-activating contexts shown to the explainer (delphi shows 40 to a 70B model; a 135M
    model's context window and attention are better spent on fewer)."""
    n_heldout: int = 10
    """Activating contexts held out for scoring, quantile-sampled first (weak activations too, as
    delphi scores), never from a packed context the explainer saw."""
    n_nonactivating: int = 10
    """Contexts where the feature is zero on every token of the window, for scoring."""
    n_top: int = 30
    """Top activations collected per feature (the explainer's pool and the held-out fallback)."""
    n_quantiles: int = 5
    """Equal-width activation buckets the held-out examples are sampled from."""
    n_per_quantile: int = 4
    """Samples kept per bucket."""
    window_before: int = 24
    """Tokens of context before the example's token."""
    window_after: int = 8
    """Tokens after it."""
    n_logits: int = 10
    """Most boosted tokens of the decoder direction shown to the template explainer (0: none)."""
    batch_features: int = 8
    """Features per batch: one batch is explained, scored and appended (flush + fsync) at a time,
    so a kill loses at most this many."""
    encode_batch_size: int = 4096
    """Cache rows per SAE call when the statistics are computed."""
    seed: int = 0
    """Seed of the quantile sampling, the non-activating contexts and the fuzzing highlights."""

    def __post_init__(self) -> None:
        check_ints(self, ("n_explain", "n_heldout", "n_nonactivating", "n_top", "n_quantiles",
                          "batch_features", "encode_batch_size"), minimum=1)
        check_ints(self, ("n_per_quantile", "window_before", "window_after", "n_logits", "seed"),
                   minimum=0)
        if self.n_top < self.n_explain:
            raise ValueError(f"n_top={self.n_top} is less than n_explain={self.n_explain}; the "
                             "explainer's examples come from the top activations")
