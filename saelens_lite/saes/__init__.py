"""SAE architectures, one module each, all registered in `REGISTRY` (see registry.py)."""

from saelens_lite.saes import batchtopk, jumprelu, relu, topk  # noqa: E402,F401  (registration)
from saelens_lite.saes.base import SAE, SAEConfig, TrainOutput, geometric_median  # noqa: E402
from saelens_lite.saes.batchtopk import BatchTopKSAE  # noqa: E402
from saelens_lite.saes.jumprelu import JumpReLUSAE  # noqa: E402
from saelens_lite.saes.registry import REGISTRY, architectures, get_sae_class, register
from saelens_lite.saes.relu import ReLUSAE  # noqa: E402
from saelens_lite.saes.topk import TopKSAE  # noqa: E402

__all__ = [
    "REGISTRY",
    "architectures",
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
]

import saelens_lite.baselines  # noqa: E402,F401  (registers dense, denoising, vae, conv)
