"""Feature dashboards: a static site writer (``site``) that renders the statistics of
:mod:`saelens_lite.features`, and a local server with an optional live-encoding endpoint
(``server``)."""

from saelens_lite.dashboards.config import DashboardConfig
from saelens_lite.dashboards.site import build_dashboard
from saelens_lite.features.stats import FeatureStats, compute_feature_stats

__all__ = ["DashboardConfig", "FeatureStats", "build_dashboard", "compute_feature_stats"]
