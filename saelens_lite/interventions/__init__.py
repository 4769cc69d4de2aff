"""SAEs inside the running model: splicing with the error term, feature edits, generation with
edits and attribution (one module per job).

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
from saelens_lite.interventions.generation import (
    Continuation,
    GenerationResult,
    decode_loop,
    generate,
)
from saelens_lite.interventions.splice import (
    SAESplice,
    SpliceNodes,
    as_sae_map,
    check_saes,
    spliced,
)

__all__ = [
    "AblationCheck", "Attribution", "ErrorAttribution", "FeatureAttribution", "ablation_check",
    "attribute", "spearman", "token_id",
    "EDIT_KINDS", "BoundEdit", "FeatureEdit", "ablate", "add_direction", "apply_edits",
    "bind_edits", "clamp", "max_activations", "scale",
    "Continuation", "GenerationResult", "decode_loop", "generate",
    "SAESplice", "SpliceNodes", "as_sae_map", "check_saes", "spliced",
]
