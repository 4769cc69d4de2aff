"""SAE architectures, one module each, all registered in `REGISTRY` (see registry.py); the
non-sparse baselines of the comparison (dense, denoising, vae, conv) in `saes.baselines`."""

from saelens_lite.saes import batchtopk, jumprelu, relu, topk  # noqa: E402,F401  (registration)
from saelens_lite.saes.base import SAE, TrainOutput  # noqa: E402
from saelens_lite.saes.batchtopk import BatchTopKConfig, BatchTopKSAE  # noqa: E402
from saelens_lite.saes.config import SAEConfig  # noqa: E402
from saelens_lite.saes.jumprelu import JumpReLUConfig, JumpReLUSAE  # noqa: E402
from saelens_lite.saes.registry import (  # noqa: E402
    REGISTRY,
    architectures,
    fast_step_architectures,
    get_sae_class,
    register,
)
from saelens_lite.saes.relu import ReLUConfig, ReLUSAE  # noqa: E402
from saelens_lite.saes.terms import AuxKConfig, geometric_median  # noqa: E402
from saelens_lite.saes.topk import TopKConfig, TopKSAE  # noqa: E402

__all__ = [
    "REGISTRY",
    "architectures",
    "fast_step_architectures",
    "get_sae_class",
    "register",
    "SAE",
    "SAEConfig",
    "TrainOutput",
    "geometric_median",
    "ReLUSAE",
    "TopKSAE",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "AuxKConfig",
    "ReLUConfig",
    "TopKConfig",
    "BatchTopKConfig",
    "JumpReLUConfig",
]

# after the SAEs, so REGISTRY keeps its order: registers dense, denoising, vae, conv
from saelens_lite.saes import baselines  # noqa: E402,F401
