"""SAEs inside the running model: splicing with the error term, feature edits, generation with
edits and attribution, per-token loss effects of edits, and the stats a dashboard site gives
(one module per job). Every result has a ``to_dict()`` (JSON-ready, stable: the CLI's ``--json``
and the server send it).

    from saelens_lite.interventions import spliced, ablate, add_direction, generate, attribute
"""

from saelens_lite.interventions.attribution import (
    AblationCheck,
    Attribution,
    ErrorAttribution,
    FeatureAttribution,
    ablation_check,
    attribute,
    spearman,
    token_id,
    token_texts,
)
from saelens_lite.interventions.edits import (
    EDIT_KINDS,
    BoundEdit,
    FeatureEdit,
    ablate,
    add_direction,
    apply_edits,
    bind_edits,
    clamp,
    max_activations,
    scale,
)
from saelens_lite.interventions.effects import TokenLossEffect, TokenLossEffects, token_loss_effects
from saelens_lite.interventions.generation import (
    Continuation,
    GenerationResult,
    decode_loop,
    generate,
)
from saelens_lite.interventions.site_stats import SiteStats, load_site_stats
from saelens_lite.interventions.splice import (
    SAESplice,
    SpliceNodes,
    as_sae_map,
    check_saes,
    spliced,
)

__all__ = [
    "AblationCheck", "Attribution", "ErrorAttribution", "FeatureAttribution", "ablation_check",
    "attribute", "spearman", "token_id", "token_texts",
    "TokenLossEffect", "TokenLossEffects", "token_loss_effects",
    "EDIT_KINDS", "BoundEdit", "FeatureEdit", "ablate", "add_direction", "apply_edits",
    "bind_edits", "clamp", "max_activations", "scale",
    "Continuation", "GenerationResult", "decode_loop", "generate",
    "SiteStats", "load_site_stats",
    "SAESplice", "SpliceNodes", "as_sae_map", "check_saes", "spliced",
]
