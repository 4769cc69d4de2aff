"""Backwards-compatible path of ``saelens_lite.saes.baselines`` (where the baselines now live)."""

from saelens_lite.saes.baselines import VAE, ConvAE, DenoisingAE, DenseAE, corrupt

__all__ = ["DenseAE", "DenoisingAE", "corrupt", "VAE", "ConvAE"]
