"""What a dashboard site shows: the feature statistics' settings plus the page's own."""

from __future__ import annotations

from dataclasses import dataclass

from saelens_lite.features.stats import StatsConfig
from saelens_lite.util.validate import check_ints


@dataclass
class DashboardConfig(StatsConfig):
    """What each feature page shows and how the statistics are computed (the statistics'
    fields are :class:`~saelens_lite.features.stats.StatsConfig`'s)."""

    window_before: int = 12
    """Context tokens shown before the activating token."""
    window_after: int = 4
    """Context tokens shown after it."""
    n_logits: int = 10
    """Most boosted and most suppressed tokens listed (0: skip logit effects)."""
    n_neighbours: int = 8
    """Nearest features by decoder cosine similarity (0: skip; costs O(F^2 D))."""
    shard_features: int = 256
    """Features per data file of the site (a page loads one such file)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ints(self, ("shard_features",), minimum=1)
        check_ints(self, ("window_before", "window_after", "n_logits", "n_neighbours"), minimum=0)


__all__ = ["DashboardConfig"]
