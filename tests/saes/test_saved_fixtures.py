"""Every SAE saved by earlier code still loads and computes the same thing (issue 16).

The fixtures in tests/fixtures/saes were written by the code before the per-architecture
configs and the fast-step refactor (see the README there); they are the oracle here."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from saelens_lite.saes import REGISTRY, SAE

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "saes"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "cfg.json").exists())


def test_every_architecture_has_a_fixture():
    saved = {json.loads((FIXTURES / n / "cfg.json").read_text())["architecture"] for n in NAMES}
    old = {"relu", "topk", "batchtopk", "jumprelu", "dense", "denoising", "vae", "conv"}
    assert old <= saved  # every architecture that existed when they were written
    assert saved <= set(REGISTRY)


def assert_within_ulps(out: torch.Tensor, ref: torch.Tensor, ulps: int = 8) -> None:
    """Equal to a few ulp of the output's scale: float kernels (oneDNN, BLAS) pick other
    summation orders on other CPUs and ISAs, so bit-identity is not a property they have."""
    atol = ulps * torch.finfo(ref.dtype).eps * ref.abs().max().item()
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_saved_sae_outputs_match(name):
    sae = SAE.load(FIXTURES / name)
    io = load_file(str(FIXTURES / name / "io.safetensors"))
    sae.eval()
    with torch.no_grad():
        acts = sae.encode(io["x"])
        # which latents fire is exact (a threshold / top-k choice), their values are floats
        assert torch.equal(acts != 0, io["acts"] != 0)
        assert_within_ulps(acts, io["acts"])
        assert_within_ulps(sae(io["x"]), io["x_hat"])


@pytest.mark.parametrize("name", NAMES)
def test_saved_sae_train_step_is_unchanged(name):
    sae = SAE.load(FIXTURES / name)
    io = load_file(str(FIXTURES / name / "io.safetensors"))
    sae.train()
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    dead[: sae.cfg.d_sae // 2] = True
    torch.manual_seed(1234)
    out = sae.training_forward(io["x"], dead_mask_F=dead)
    out.loss.backward()
    # float32 sums may be reordered by a refactor: a few ulps, not a change of the math
    torch.testing.assert_close(out.loss.detach(), io["loss"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.x_hat_BD.detach(), io["train_x_hat"], rtol=1e-6, atol=1e-6)
    grads = {k.removeprefix("grad."): v for k, v in io.items() if k.startswith("grad.")}
    assert grads, "fixture without gradients"
    for pname, p in sae.named_parameters():
        if pname in grads:
            torch.testing.assert_close(p.grad, grads[pname], rtol=1e-5, atol=1e-6, msg=pname)
        else:
            assert p.grad is None or not p.grad.any(), pname
