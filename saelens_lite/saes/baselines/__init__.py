"""Non-sparse baselines, registered in the same registry as the SAEs (same trainer, save/load,
evaluation): ``dense`` (plain ReLU autoencoder), ``denoising``, ``vae`` and ``conv``.
See ``saelens_lite.compare`` for training them all under one latent and token budget."""

from saelens_lite.saes.baselines.conv import ConvAE
from saelens_lite.saes.baselines.denoising import DenoisingAE, corrupt
from saelens_lite.saes.baselines.dense import DenseAE
from saelens_lite.saes.baselines.vae import VAE

__all__ = ["DenseAE", "DenoisingAE", "corrupt", "VAE", "ConvAE"]
