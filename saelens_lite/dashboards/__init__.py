"""Feature dashboards: streaming per-feature statistics (``features``), a static site writer
(``site``) and a local server with an optional live-encoding endpoint (``server``)."""

from saelens_lite.dashboards.features import DashboardConfig, FeatureStats, compute_feature_stats
from saelens_lite.dashboards.site import build_dashboard

__all__ = ["DashboardConfig", "FeatureStats", "build_dashboard", "compute_feature_stats"]
