"""Variational autoencoder with a Gaussian latent (Kingma & Welling 2014, "Auto-Encoding
Variational Bayes"), one linear layer each way so it shares the SAE's parameter layout:

    q(z|x) = N(mu, diag(exp(lv))),  mu = (x - b_dec) @ W_enc + b_enc,
                                    lv = (x - b_dec) @ W_enc_lv + b_enc_lv
    p(z) = N(0, I),  p(x|z) = N(z @ W_dec + b_dec, diag(sigma^2))   (sigma learned per dimension)
    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))

Training minimises -E_q[log p(x|z)] + beta * KL with the SGVB estimator B (eq. 7 of the paper):
the KL in closed form, the expectation with one reparameterised sample z = mu + exp(lv/2) * eps.
`encode` returns mu (the deterministic code); `sample(n)` draws new data; `elbo(x)` scores each
example (anomaly detection: low ELBO = unusual). sigma is floored at 1e-2 of the normalised
input scale so constant input dimensions (the corners of a digit) cannot drive it to 0.

Shape legend: B batch, D d_in, F d_sae (latent dimensions), N samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saelens_lite.saes.base import SAE, TrainOutput
from saelens_lite.saes.config import SAEConfig, check_numbers
from saelens_lite.saes.registry import register


@dataclass
class VAEConfig(SAEConfig):
    """VAE's config: the shared fields and the KL weight."""

    architecture: str = "vae"
    """As SAEConfig.architecture."""
    vae_beta: float = 1.0
    """Weight of the KL term (beta-VAE, Higgins et al. 2017); 1 gives the ELBO."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self, ("vae_beta",))

_LOG_2PI = math.log(2 * math.pi)


@register("vae")
class VAE(SAE):
    config_class = VAEConfig
    unit_norm_decoder = False
    is_sparse_coder = False  # a baseline of the comparison (SAE.is_sparse_coder)

    def __init__(self, cfg):
        super().__init__(cfg)
        dt = cfg.torch_dtype
        self.W_enc_lv = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dt))
        self.b_enc_lv = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        self.log_std_D = nn.Parameter(torch.zeros(cfg.d_in, dtype=dt))
        self.register_buffer("log_std_floor", torch.tensor(math.log(1e-2), dtype=dt))

    # -- the distributions
    def posterior(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        """(mu_BF, logvar_BF) of q(z|x)."""
        xc_BD = x_BD.to(self.W_enc.dtype) - self.b_dec
        return xc_BD @ self.W_enc + self.b_enc, xc_BD @ self.W_enc_lv + self.b_enc_lv

    def log_std(self) -> Tensor:
        return torch.maximum(self.log_std_D, self.log_std_floor)

    def log_likelihood(self, x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
        """log N(x; x_hat, diag(sigma^2)) per example, (...,)."""
        ls_D = self.log_std()
        z_BD = (x_BD - x_hat_BD) * torch.exp(-ls_D)
        return -0.5 * (z_BD.pow(2) + _LOG_2PI).sum(-1) - ls_D.sum()

    @staticmethod
    def kl_BF(mu_BF: Tensor, logvar_BF: Tensor) -> Tensor:
        """KL(N(mu, e^lv) || N(0, 1)) per latent: (mu^2 + e^lv - 1 - lv) / 2."""
        return 0.5 * (mu_BF.pow(2) + logvar_BF.exp() - 1.0 - logvar_BF)

    def encode(self, x_BD: Tensor) -> Tensor:
        return self.posterior(x_BD)[0]

    # -- training
    def training_forward(self, x_BD, *, sparsity_scale=1.0, dead_mask_F=None) -> TrainOutput:
        x_BD = x_BD.to(self.W_enc.dtype)
        mu_BF, lv_BF = self.posterior(x_BD)
        z_BF = mu_BF + torch.exp(0.5 * lv_BF) * torch.randn_like(mu_BF)  # reparameterisation
        nll = -self.log_likelihood(x_BD, self.decode(z_BF)).mean()
        kl_BF = self.kl_BF(mu_BF, lv_BF)
        kl = kl_BF.sum(-1).mean()
        loss = nll + self.cfg.vae_beta * kl
        with torch.no_grad():
            x_hat_BD = self.decode(mu_BF)  # the mean reconstruction, for mse / fvu
            mse = (x_hat_BD - x_BD).pow(2).sum(-1).mean()
            # "active units" (Burda et al. 2016): latents whose posterior mean varies with x.
            fired_F = mu_BF.var(0) > 0.01 if x_BD.shape[0] > 1 else kl_BF.mean(0) > 0.01
        return self._output(x_BD, x_hat_BD, fired_F, float(self.cfg.d_sae),
                            {"mse": mse, "nll": nll.detach(), "kl": kl.detach()}, loss)

    # -- generative uses
    @torch.no_grad()
    def sample(self, n: int, *, noise: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """n new examples (N, D): decode(z), z ~ N(0, I); with ``noise`` also add the
        observation noise sigma * eps (a draw from p(x) rather than its conditional means)."""
        dev, dt = self.W_dec.device, self.W_dec.dtype
        z_NF = torch.randn(n, self.cfg.d_sae, generator=generator, dtype=dt, device=dev)
        x_ND = self.decode(z_NF)
        if noise:
            x_ND = x_ND + self.log_std().exp() * torch.randn(x_ND.shape, generator=generator, dtype=dt, device=dev)
        return x_ND

    @torch.no_grad()
    def elbo(self, x_BD: Tensor, *, n_samples: int = 16, generator: torch.Generator | None = None) -> Tensor:
        """ELBO per example (B,): the closed-form KL and an ``n_samples`` Monte-Carlo estimate of
        E_q[log p(x|z)] (unbiased; a lower bound on log p(x) in expectation)."""
        x_BD = x_BD.to(self.W_enc.dtype)
        mu_BF, lv_BF = self.posterior(x_BD)
        eps_NBF = torch.randn((n_samples, *mu_BF.shape), generator=generator, dtype=mu_BF.dtype,
                              device=mu_BF.device)
        z_NBF = mu_BF + torch.exp(0.5 * lv_BF) * eps_NBF
        rec_B = self.log_likelihood(x_BD, self.decode(z_NBF)).mean(0)
        return rec_B - self.kl_BF(mu_BF, lv_BF).sum(-1)

    # -- trainer hooks
    @torch.no_grad()
    def init_from_data_(self, x_ND: Tensor) -> None:
        """b_dec per cfg.b_dec_init, and sigma_d = 0.3 std(x_d): starting from sigma = 1 (as
        large as the normalised data's spread) the KL term wins and the posterior collapses; from
        a sigma that assumes the latents explain ~90% of the variance, training finds the
        PPCA-like optimum (Lucas et al. 2019) in far fewer steps."""
        super().init_from_data_(x_ND)
        std_D = x_ND.to(self.log_std_D.device, torch.float32).std(0)
        self.log_std_D.copy_((0.3 * std_D).clamp_min(math.exp(float(self.log_std_floor))).log())

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Trained on c x, used on x: the posterior is unchanged, the likelihood is rescaled
        (sigma / c), so the ELBO shifts by D log c, the Jacobian of x -> c x."""
        super().fold_input_scale_(scale)
        self.W_enc_lv.mul_(scale)
        self.log_std_D.sub_(math.log(scale))
        self.log_std_floor.sub_(math.log(scale))
