"""Matryoshka BatchTopK: the loss and gradients against a dense float64 reference, the nesting
of the prefixes, the config's groups and weights, save / load and training from the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_sae, write_cache

from saelens_lite.saes import SAE, BatchTopKSAE, MatryoshkaSAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")

D, F, K, B = 12, 40, 3, 32


def make(dtype="float64", **kw) -> MatryoshkaSAE:
    cfg = dict(d_in=D, d_sae=F, k=K, dtype=dtype, aux_k=6) | kw
    return make_sae("matryoshka", w_enc_noise=0.3, **cfg)


def data(n=B, seed=1, dtype=torch.float64):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 + 0.5


def batchtopk_config(cfg) -> SAEConfig:
    """The same SAE's config as a plain BatchTopK one (without the Matryoshka fields)."""
    own = {k: v for k, v in cfg.to_dict().items() if not k.startswith("matryoshka_")}
    return SAEConfig.build(**(own | {"architecture": "batchtopk"}))


def reference_loss(sae, x_BD, dead_F):
    """Dense float64 reference: flat batch top-(B*k) of pre / r(x) among positive pre, then
    sum_m w_m mean_b ||x - x_hat_m||^2 with x_hat_m decoding the latents f < n_m through a mask,
    plus AuxK on the full residual."""
    cfg = sae.cfg
    widths, weights = sae.widths, sae.weights
    pre_BF = (x_BD - sae.b_dec) @ sae.W_enc + sae.b_enc
    r_B1 = (x_BD - sae.b_dec).detach().norm(dim=1, keepdim=True) / D**0.5
    score = (pre_BF / r_B1).detach()
    keep = torch.zeros(B * F, dtype=torch.bool)
    keep[score.flatten().topk(B * cfg.k).indices] = True
    z_BF = pre_BF * (keep.view(B, F) & (pre_BF > 0))
    loss = 0.0
    for n, w in zip(widths, weights):
        mask_F = (torch.arange(F) < n).to(x_BD.dtype)
        x_hat_BD = (z_BF * mask_F) @ sae.W_dec + sae.b_dec
        loss = loss + w * (x_BD - x_hat_BD).pow(2).sum(-1).mean()
    e_BD = (x_BD - x_hat_BD).detach()
    n_dead, k_full = int(dead_F.sum()), cfg.aux_k
    vals, idx = pre_BF.masked_fill(~dead_F, -float("inf")).topk(min(k_full, n_dead), dim=-1)
    e_hat_BD = torch.zeros(B, F, dtype=x_BD.dtype).scatter(1, idx, vals.relu()) @ sae.W_dec
    l_aux = min(n_dead / k_full, 1.0) * (e_hat_BD - e_BD).pow(2).sum() / (e_BD - e_BD.mean(0)).pow(2).sum()
    v = (x_BD - x_BD.mean(0)).pow(2).sum() / B
    return loss + cfg.aux_coeff * v * l_aux


@pytest.mark.parametrize("groups,weights", [(None, None), ([0.25, 0.25, 0.5], [1.0, 0.5, 2.0]),
                                            ([7, 13, 20], None)])
def test_loss_and_gradients_equal_a_dense_float64_reference(groups, weights):
    sae = make(matryoshka_groups=groups, matryoshka_weights=weights)
    x = data()
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::3] = True
    out = sae.training_forward(x, dead_mask_F=dead)
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    ref = reference_loss(sae, x, dead)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    for n, p in sae.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-10, atol=1e-12, msg=n)
    assert torch.equal(out.losses["mse"], out.losses[f"prefix_mse_{F}"])


def test_one_group_of_weight_one_is_batchtopk_exactly():
    sae = make(matryoshka_groups=[F], matryoshka_weights=[1.0])
    btk = BatchTopKSAE(batchtopk_config(sae.cfg))
    btk.load_state_dict(sae.state_dict())
    x = data()
    a, b = sae.training_forward(x), btk.training_forward(x)
    a.loss.backward()
    b.loss.backward()
    assert torch.equal(a.loss, b.loss)
    for (n, p), q in zip(sae.named_parameters(), btk.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-13, atol=1e-13, msg=n)


def test_a_prefix_reconstruction_uses_only_its_own_latents():
    sae = make(matryoshka_groups=[5, 15, 20])
    x = data()
    for n in sae.widths[:-1]:
        sae.zero_grad()
        out = sae.training_forward(x)
        out.losses[f"prefix_mse_{n}"].backward()
        assert torch.all(sae.W_dec.grad[n:] == 0) and sae.W_dec.grad[:n].abs().sum() > 0
        assert torch.all(sae.W_enc.grad[:, n:] == 0)
        with torch.no_grad():  # later decoder rows change nothing in prefix n's error
            saved = sae.W_dec[n:].clone()
            sae.W_dec[n:] = torch.randn_like(saved)
            again = sae.training_forward(x).losses[f"prefix_mse_{n}"]
            sae.W_dec[n:] = saved
        torch.testing.assert_close(again, out.losses[f"prefix_mse_{n}"], rtol=1e-13, atol=0)


def test_a_group_without_kept_codes_still_decodes():
    sae = make(matryoshka_groups=[1, 39])
    with torch.no_grad():
        sae.b_enc[0] = -1e3  # latent 0, the whole first group, never fires
    out = sae.training_forward(data())
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.all(sae.W_dec.grad[0] == 0)


@pytest.mark.parametrize("d_sae,groups,widths", [
    (48, None, [3, 6, 12, 24, 48]),
    (8, None, [1, 2, 4, 8]),
    (40, [0.25, 0.75], [10, 40]),
    (40, [0.1, 0.2, 0.7], [4, 12, 40]),
    (40, [16, 24], [16, 40]),
])
def test_groups_resolve_to_prefix_widths(d_sae, groups, widths):
    sae = make(d_sae=d_sae, k=2, matryoshka_groups=groups)
    assert sae.widths == widths
    assert sae.weights == [1 / len(widths)] * len(widths)


@pytest.mark.parametrize("field,value,extra", [
    ("matryoshka_groups", [10, 20], {}),  # ints not summing to d_sae
    ("matryoshka_groups", [0.5, 0.6], {}),
    ("matryoshka_groups", [], {}),
    ("matryoshka_groups", [20, -10, 30], {}),
    ("matryoshka_groups", [0.001, 0.999], {}),  # first group rounds to no latent
    ("matryoshka_groups", [True, 39], {}),
    ("matryoshka_weights", [1.0, 1.0], {"matryoshka_groups": [20, 10, 10]}),
    ("matryoshka_weights", [1.0, -1.0], {"matryoshka_groups": [20, 20]}),
    ("matryoshka_weights", [0, 0], {"matryoshka_groups": [20, 20]}),
    ("matryoshka_weights", [1.0, float("inf")], {"matryoshka_groups": [20, 20]}),
])
def test_bad_groups_and_weights_name_the_field_and_value(field, value, extra):
    kw = dict(architecture="matryoshka", d_in=D, d_sae=F, k=K) | extra | {field: value}
    with pytest.raises(ValueError) as e:
        SAEConfig.build(**kw)
    assert f"SAEConfig.{field}={value!r}" in str(e.value) and "allowed" in str(e.value)


def test_save_load_round_trip_keeps_groups_weights_and_threshold(tmp_path):
    sae = make(dtype="float32", matryoshka_groups=[0.125, 0.375, 0.5], matryoshka_weights=[2, 1, 1])
    x = data(dtype=torch.float32)
    sae.training_forward(x)
    sae.finish_training_(x)
    sae.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "cfg.json").read_text())
    assert saved["matryoshka_groups"] == [0.125, 0.375, 0.5] and saved["matryoshka_weights"] == [2, 1, 1]
    loaded = SAE.load(tmp_path / "m")
    assert type(loaded) is MatryoshkaSAE and loaded.cfg == sae.cfg
    assert (loaded.widths, loaded.weights) == (sae.widths, sae.weights) == ([5, 20, 40], [2.0, 1.0, 1.0])
    assert float(loaded.threshold) == float(sae.threshold) >= 0
    assert torch.equal(loaded(x), sae(x))


def test_inference_is_batchtopk_with_the_threshold():
    sae = make()
    x = data()
    sae.training_forward(x)
    sae.finish_training_(x)
    btk = BatchTopKSAE(batchtopk_config(sae.cfg))
    btk.load_state_dict(sae.state_dict())
    assert torch.equal(sae.encode(x), btk.encode(x)) and torch.equal(sae(x), btk(x))
    # the calibrated threshold is the smallest kept score and inference keeps scores above it
    assert int((sae.encode(x) != 0).sum()) == B * K - 1


def test_cli_trains_matryoshka_on_a_tiny_cache(tmp_path):
    from saelens_lite.cli import main

    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(64, 16, generator=g)
    x = ((torch.rand(600, 64, generator=g) < 0.06) * torch.rand(600, 64, generator=g)) @ dirs
    write_cache(tmp_path / "cache", {"a": x.numpy()})
    code = main(["train", "--activations", str(tmp_path / "cache"), "--arch", "matryoshka",
                 "--latents", "64", "--k", "4", "--batch-size", "128", "--tokens", str(128 * 8),
                 "--option", "matryoshka_groups=[8,24,32]", "--option", "matryoshka_weights=[1,1,2]",
                 "--out", str(tmp_path / "run"), "--no-progress", "--checkpoint-every", "0"])
    assert code == 0
    sae = SAE.load(tmp_path / "run" / "a")
    assert type(sae) is MatryoshkaSAE and sae.widths == [8, 32, 64] and sae.weights == [1, 1, 2]
    assert float(sae.threshold) > 0
    rec = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rec and "prefix_mse_8" in json.dumps(rec[-1])


# ---- the fast step (training/fast_step.py + MatryoshkaSAE.sparse_reconstruction)
GROUPS = pytest.mark.parametrize("groups,weights", [
    (None, None), ([7, 13, 20], None), ([0.25, 0.25, 0.5], [1.0, 0.5, 2.0]), ([F], [1.0]),
], ids=["default", "int", "fractions+weights", "one-group"])


def _dead(kind):
    if kind == "none":
        return None
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::3 if kind == "many" else 13] = True  # "few": fewer dead latents than aux_k = 6
    return dead


@GROUPS
@pytest.mark.parametrize("dead", ["none", "few", "many"])
def test_fast_step_loss_and_grads_equal_autograd_float64(groups, weights, dead):
    """The closed-form gradients (module docstring) equal autograd through training_forward,
    and the step updates BatchTopK's threshold as the autograd step does."""
    from saelens_lite.training.fast_step import sparse_loss_and_grads

    fast, ref = (make(matryoshka_groups=groups, matryoshka_weights=weights) for _ in range(2))
    x, dead_F = data(), _dead(dead)
    assert int(torch.bincount(ref._batch_topk(x)[0]).max()) <= 2 * K  # within the fast step's cap
    res = sparse_loss_and_grads(fast, x, dead_mask_F=dead_F)
    out = ref.training_forward(x, dead_mask_F=dead_F)
    out.loss.backward()
    assert float(fast.threshold) >= 0  # the fast step set it from its selection
    torch.testing.assert_close(fast.threshold, ref.threshold, rtol=1e-12, atol=0)
    tol = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.out.loss, out.loss.detach(), **tol)
    assert res.out.losses.keys() == out.losses.keys()
    for name, v in out.losses.items():
        torch.testing.assert_close(res.out.losses[name], v.detach(), **tol)
    torch.testing.assert_close(res.out.x_hat_BD, out.x_hat_BD.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.out.fvu, out.fvu)
    torch.testing.assert_close(res.out.l0, out.l0)
    assert torch.equal(res.out.fired_F, out.fired_F)
    for name, q in ref.named_parameters():
        torch.testing.assert_close(res.grads[name], q.grad, **(tol | dict(rtol=max(tol["rtol"], 1e-10))), msg=name)
        assert res.grads[name].stride() == q.stride(), name


@GROUPS
def test_fast_train_step_takes_the_same_adam_steps_as_autograd(groups, weights):
    from saelens_lite.training.fast_step import FastTrainStep

    # k = F / 2: the fast step caps a row at its top 2k candidates where the model keeps more
    # (BatchTopKSAE.sparse_candidates); with 2k = F no row can exceed it
    a, b = (make(matryoshka_groups=groups, matryoshka_weights=weights, k=F // 2) for _ in range(2))
    oa, ob = (torch.optim.Adam(s.parameters(), lr=1e-2) for s in (a, b))
    step = FastTrainStep(b, ob)
    for i in range(4):
        x, dead_F = data(seed=20 + i), _dead("many" if i % 2 else "none")
        out = a.training_forward(x, dead_mask_F=dead_F)
        oa.zero_grad()
        out.loss.backward()
        a.before_optimizer_step_()
        oa.step()
        a.after_optimizer_step_()
        torch.testing.assert_close(step(x, dead_F).loss, out.loss.detach(), rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-11, msg=name)
    torch.testing.assert_close(b.threshold, a.threshold, rtol=1e-10, atol=0)


def test_fast_step_is_declared_and_refuses_the_dense_backward():
    from saelens_lite.saes import REGISTRY, fast_step_architectures
    from saelens_lite.training.fast_step import FastTrainStep, sparse_loss_and_grads

    assert "matryoshka" in fast_step_architectures() and REGISTRY["matryoshka"].fast_step_supports({})
    assert not REGISTRY["matryoshka"].fast_step_supports({"target_hook": "blocks.0.hook_mlp_out"})
    sae = make()
    with pytest.raises(ValueError, match="backward='dense' is invalid for architecture 'matryoshka'"):
        sparse_loss_and_grads(sae, data(), backward="dense")
    step = FastTrainStep(sae, torch.optim.Adam(sae.parameters()), backward="dense")
    with pytest.raises(ValueError, match="backward='dense'"):
        step(data())
