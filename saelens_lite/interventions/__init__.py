"""SAEs inside the running model: splicing with the error term, feature edits, generation with
edits and attribution, per-token loss effects of edits, and the stats a dashboard site gives
(one module per job). Every result has a ``to_dict()`` (JSON-ready, stable: the CLI's ``--json``
and the server send it).

    from saelens_lite.interventions import spliced, ablate, add_direction, generate, attribute
"""

from saelens_lite.interventions.attribution import Attribution, ablation_check, attribute
from saelens_lite.interventions.edits import FeatureEdit, ablate, add_direction, clamp, scale
from saelens_lite.interventions.effects import TokenLossEffects, token_loss_effects
from saelens_lite.interventions.generation import GenerationResult, generate
from saelens_lite.interventions.site_stats import SiteStats, load_site_stats
from saelens_lite.interventions.splice import spliced

# The main verbs, the edits they take and the results they return; helpers (spearman,
# token_id, bind_edits, ...) are imported from their modules.
__all__ = [
    "spliced", "generate", "attribute", "ablation_check", "token_loss_effects", "load_site_stats",
    "FeatureEdit", "ablate", "add_direction", "clamp", "scale",
    "Attribution", "GenerationResult", "TokenLossEffects", "SiteStats",
]
