"""Per-feature statistics of an SAE over an activation cache: the one home that the dashboards,
the explainers and the interventions read.

* :mod:`~saelens_lite.features.stats`: density, mean / max activation, histogram, top examples,
  quantile samples, in two streaming passes (:func:`compute_feature_stats`);
* :mod:`~saelens_lite.features.table`: the on-disk table of nonzero codes those passes share;
* :mod:`~saelens_lite.features.examples`: context windows around examples, token strings;
* :mod:`~saelens_lite.features.logits`: logit effects through the unembedding, neighbours;
* :mod:`~saelens_lite.features.store`: save / load all of it as a folder of ``.npy`` files.
"""

from saelens_lite.features.examples import TokenStrings, example_windows
from saelens_lite.features.logits import (
    LogitEffects,
    Neighbours,
    logit_effects,
    nearest_features,
    unembedding,
)
from saelens_lite.features.stats import (
    FeatureStats,
    StatsConfig,
    compute_feature_stats,
    resolve_hook,
)
from saelens_lite.features.store import SavedFeatures, features_dir, load_features, save_features
from saelens_lite.features.table import CodeTable

__all__ = ["StatsConfig", "FeatureStats", "compute_feature_stats", "resolve_hook", "CodeTable",
           "example_windows", "TokenStrings", "LogitEffects", "Neighbours", "logit_effects",
           "nearest_features", "unembedding", "SavedFeatures", "save_features", "load_features",
           "features_dir"]
