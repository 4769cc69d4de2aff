"""Every registered architecture: invariants, oracles, and that its loss trains."""

import copy
import math

import pytest
import torch

from saelens_lite.saes import REGISTRY, SAE, JumpReLUConfig, SAEConfig, geometric_median
from saelens_lite.saes.base import aux_k
from saelens_lite.saes.config import field_owners

ARCHS = sorted(REGISTRY)
# Architectures that encode each token on its own (conv reads a (B, S, D) input as sequences).
TOKENWISE = [a for a in ARCHS if REGISTRY[a].tokenwise]
# The k-sparse architectures (saes/terms.AuxKConfig): decoder rows free or unit (decoder_norm).
K_SPARSE = field_owners()["decoder_norm"]


pytestmark = pytest.mark.usefixtures("one_thread")


D, F, K = 16, 48, 4


def make(arch, **kw) -> SAE:
    torch.manual_seed(0)
    cfg = (
        dict(
            architecture=arch,
            d_in=D,
            d_sae=F,
            k=K,
        )
        | ({"jumprelu_init_threshold": 0.05, "jumprelu_bandwidth": 0.1} if arch == "jumprelu" else {})
        | kw
    )
    sae = SAE.from_config(SAEConfig.build(**cfg))
    with torch.no_grad():  # non-trivial biases so every term of the math is exercised
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def data(n=64, seed=0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_then_decode_equals_forward(arch):
    sae, x = make(arch), data()
    if arch == "batchtopk":
        sae.training_forward(x)  # estimate a threshold first
    torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x))
    vals, idx = sae.encode_sparse(x)
    torch.testing.assert_close(torch.zeros(len(x), F).scatter(-1, idx, vals), sae.encode(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_is_exact(arch, tmp_path):
    sae, x = make(arch), data()
    sae.training_forward(x)
    sae.save(tmp_path / "sae")
    loaded = SAE.load(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    sd, ld = sae.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) for k in sd)
    assert torch.equal(loaded(x), sae(x))


@pytest.mark.parametrize(
    "field,value",
    [
        ("architecture", "nope"),
        ("k", F + 1),
        ("k", 0),
        ("l1_coeff", -1.0),
        ("aux_coeff", -0.1),
        ("l0_coeff", float("nan")),
        ("d_in", -1),  # 0 is a config not sized yet (TrainConfig.sae)
        ("jumprelu_bandwidth", 0.0),
        ("dtype", "int8"),
        ("b_dec_init", "median"),
        ("decoder_init_norm", 0.0),
        ("decoder_init_norm", float("inf")),
        ("decoder_norm", "yes"),
    ],
)
def test_config_validation_names_field_and_value(field, value):
    owners = field_owners().get(field, ["topk"])
    arch = "topk" if "topk" in owners else owners[0]  # the value is checked by its own config
    with pytest.raises(ValueError) as e:
        SAEConfig.build(**({"architecture": arch, "d_in": D, "d_sae": F, "k": K} | {field: value}))
    assert field in str(e.value) and repr(value) in str(e.value) and "allowed" in str(e.value)


def test_topk_l0_is_exactly_k():
    sae = make("topk")
    out = sae.training_forward(data() * 10)
    assert out.l0.item() == K
    assert ((sae.encode(data() * 10) > 0).sum(-1) == K).all()


def test_batchtopk_mean_l0_is_k_in_training_and_threshold_used_at_inference():
    sae, x = make("batchtopk", relative_threshold=False), data(256) * 10  # the raw rule
    out = sae.training_forward(x)
    assert out.l0.item() == pytest.approx(K)
    per_token = (sae.encode(x) > 0).sum(-1)
    theta = sae.threshold.item()
    assert theta > 0
    pre = sae.pre_acts(x)
    torch.testing.assert_close(sae.encode(x), pre * (pre > theta))
    assert per_token.float().std() > 0  # per-token counts vary: not a per-token top-k


def test_jumprelu_ste_gives_threshold_gradient_and_l0_is_differentiable():
    sae = make("jumprelu", jumprelu_bandwidth=0.5)
    out = sae.training_forward(data())
    (g_l0,) = torch.autograd.grad(out.losses["l0"], sae.log_threshold, retain_graph=True)
    assert g_l0.abs().sum() > 0 and (g_l0 <= 0).all()  # raising theta lowers L0
    (g_mse,) = torch.autograd.grad(out.losses["mse"], sae.log_threshold)
    assert g_mse.abs().sum() > 0


def test_relu_l1_term_equals_float64_formula():
    sae, x = make("relu"), data()
    out = sae.training_forward(x, sparsity_scale=0.5)
    W_enc, b_enc, W_dec, b_dec = (
        p.detach().double() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    )
    f = torch.clamp((x.double() - b_dec) @ W_enc + b_enc, min=0)
    l1 = (f * W_dec.norm(dim=1)).sum(1).mean()
    mse = ((f @ W_dec + b_dec - x.double()) ** 2).sum(1).mean()
    assert out.losses["l1"].item() == pytest.approx(l1.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((mse + 0.5 * sae.cfg.l1_coeff * l1).item(), rel=1e-5)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_loss_equals_independent_float64_reference(arch):
    sae, x = make(arch, aux_k=5), data()
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::3] = True  # 16 dead latents >= aux_k
    out = sae.training_forward(x, dead_mask_F=dead)
    W_enc, b_enc, W_dec, b_dec = (
        p.detach().double() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    )
    pre = (x.double() - b_dec) @ W_enc + b_enc
    e = x.double() - out.x_hat_BD.detach().double()
    e_hat = torch.zeros_like(e)
    for b in range(len(x)):
        dead_ids = [i for i in range(F) if dead[i]]
        top = sorted(dead_ids, key=lambda i: -pre[b, i].item())[:5]
        for i in top:
            e_hat[b] += max(pre[b, i].item(), 0.0) * W_dec[i]
    ref = ((e_hat - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    assert out.losses["auxk"].item() == pytest.approx(ref.item(), rel=1e-5)
    # Gao et al.: FVU + aux_coeff * L_aux; our loss is that times the batch's variance per token.
    xd = x.double()
    v = ((xd - xd.mean(0)) ** 2).sum() / len(xd)
    assert out.loss.item() == pytest.approx(out.losses["mse"].item() + v.item() * ref.item() / 32, rel=1e-5)
    few = torch.zeros(F, dtype=torch.bool)
    few[:2] = True  # fewer dead than aux_k: k_aux = n_dead and the term is scaled by n_dead / aux_k
    assert aux_k(sae, few) == (2, 2 / 5) and aux_k(sae, None) == (0, 0.0)


@pytest.mark.parametrize("arch", [a for a in ARCHS if REGISTRY[a].unit_norm_decoder])
def test_decoder_rows_unit_norm_and_parallel_grad_removed(arch):
    sae = make(arch, **({"decoder_norm": "unit"} if arch in K_SPARSE else {}))
    assert sae.unit_norm_decoder
    sae.training_forward(data(), dead_mask_F=torch.ones(F, dtype=torch.bool)).loss.backward()
    sae.before_optimizer_step_()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(F, 1) + 0.5)
    sae.after_optimizer_step_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(F))


@pytest.mark.parametrize("arch", K_SPARSE)
def test_a_free_decoder_starts_at_its_init_norm_and_keeps_the_norms_a_step_gives_it(arch):
    sae = make(arch, decoder_norm="free", decoder_init_norm=0.1)
    assert not sae.unit_norm_decoder and type(sae).unit_norm_decoder  # the class keeps its default
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((F,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    sae.training_forward(data() * 10, dead_mask_F=torch.ones(F, dtype=torch.bool)).loss.backward()
    g = sae.W_dec.grad.clone()
    sae.before_optimizer_step_()
    assert torch.equal(sae.W_dec.grad, g)  # no projection: the gradient may change the norms
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(F, 1) + 0.5)
    norms = sae.W_dec.norm(dim=1)
    sae.after_optimizer_step_()
    assert torch.equal(sae.W_dec.norm(dim=1), norms)
    assert (norms - 0.1).abs().max() > 0.01


def test_relu_starts_its_free_rows_at_decoder_init_norm_and_old_configs_load_at_unit():
    sae = make("relu", decoder_init_norm=0.1)
    assert not sae.unit_norm_decoder
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((F,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    sae.training_forward(data() * 10).loss.backward()
    g = sae.W_dec.grad.clone()
    sae.before_optimizer_step_()
    assert torch.equal(sae.W_dec.grad, g) and g.abs().sum() > 0  # no projection
    torch.testing.assert_close(make("relu").W_dec.norm(dim=1), torch.ones(F))  # the default
    d = {k: v for k, v in make("relu").cfg.to_dict().items() if k != "decoder_init_norm"}
    assert SAEConfig.from_dict(d).decoder_start_norm == 1.0


@pytest.mark.parametrize("arch", K_SPARSE)
def test_auto_decoder_norm_frees_an_saes_rows_from_0_1_and_keeps_a_transcoders_unit(arch):
    sae = make(arch, decoder_norm="auto")
    assert not sae.unit_norm_decoder
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((F,), 0.1))
    tc = make(arch, decoder_norm="auto", target_hook="blocks.0.hook_mlp_out")
    assert tc.unit_norm_decoder
    torch.testing.assert_close(tc.W_dec.norm(dim=1), torch.ones(F))
    # an explicit start wins over auto's; saved configs that predate the fields load as unit / 1
    assert make(arch, decoder_norm="auto", decoder_init_norm=0.5).W_dec.norm(dim=1).max() < 0.51
    d = {k: v for k, v in make(arch).cfg.to_dict().items() if not k.startswith("decoder_")}
    old = SAEConfig.from_dict(d)
    assert (old.decoder_norm, old.decoder_init_norm, old.free_decoder) == ("unit", 1.0, False)


@pytest.mark.parametrize("arch", K_SPARSE)
def test_a_small_start_under_unit_norm_leaves_only_the_encoder_small(arch):
    sae = make(arch, decoder_norm="unit", decoder_init_norm=0.25)
    torch.testing.assert_close(sae.W_enc.norm(dim=0), torch.full((F,), 0.25))
    sae.training_forward(data() * 10).loss.backward()
    sae.before_optimizer_step_()
    sae.after_optimizer_step_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(F))
    torch.testing.assert_close(sae.W_enc.norm(dim=0), torch.full((F,), 0.25))


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_input_scale_makes_raw_input_equivalent(arch):
    sae, x, c = make(arch), data(), 3.7
    if arch == "batchtopk":
        sae.training_forward(c * x)
    acts_ref = sae.encode(c * x).detach()
    x_hat_ref = sae(c * x).detach() / c
    sae.fold_input_scale_(c)
    torch.testing.assert_close(sae.encode(x), acts_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), x_hat_ref, rtol=1e-5, atol=1e-5)


def test_geometric_median_beats_mean_on_skewed_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1, generator=g).exp()  # lognormal, median 1, mean e^0.5
    gm = geometric_median(x).item()
    assert abs(gm - 1.0) < 0.08 and abs(x.mean().item() - 1.0) > 0.5
    pts = torch.randn(500, 3, generator=g)
    y = geometric_median(pts)
    for d in torch.eye(3)[:2]:  # gradient of sum ||x - y|| vanishes at the optimum
        assert abs(((y - pts) / (y - pts).norm(dim=1, keepdim=True)).sum(0) @ d) < 1e-2 * len(pts)
    sae = make("topk")
    sae.init_from_data_(x.repeat(1, D))
    torch.testing.assert_close(sae.b_dec, torch.full((D,), gm), rtol=1e-4, atol=1e-4)


def synthetic(n, seed, n_true=64, p_active=0.04):
    """Sparse superposition: each token is a non-negative combination of a few of n_true > D
    unit directions."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_true, D, generator=torch.Generator().manual_seed(123))
    dirs /= dirs.norm(dim=1, keepdim=True)
    coef = torch.rand(n, n_true, generator=g) * (torch.rand(n, n_true, generator=g) < p_active)
    return (coef * 3) @ dirs


TRAIN_KW = {
    "relu": dict(l1_coeff=0.05),
    "jumprelu": dict(l0_coeff=0.01, jumprelu_init_threshold=0.1),
    "topk": dict(multi_topk=True),
    "batchtopk": {},
}


def _adam_steps(sae, *, steps: int, batch: int, lr: float, dead_after: int):
    """Adam on `synthetic` batches as the trainer runs it (decoder hooks, dead mask after
    `dead_after` steps without firing); returns (last TrainOutput, step each latent last fired)."""
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    last_fired = torch.zeros(sae.cfg.d_sae)
    for step in range(steps):
        out = sae.training_forward(synthetic(batch, step), dead_mask_F=step - last_fired > dead_after)
        last_fired[out.fired_F] = step
        opt.zero_grad()
        out.loss.backward()
        sae.before_optimizer_step_()
        opt.step()
        sae.after_optimizer_step_()
    return out, last_fired


@pytest.mark.parametrize("arch", ARCHS)
def test_short_training_reduces_fvu(arch):
    sae = make(arch, d_sae=96, **TRAIN_KW.get(arch, {}))
    sae.init_from_data_(synthetic(512, 99))
    out, _ = _adam_steps(sae, steps=400, batch=256, lr=1e-2, dead_after=50)
    x = synthetic(1024, 10_000)
    fvu = ((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert fvu < 0.3, fvu
    assert math.isfinite(out.loss.item())


def test_batchtopk_selection_equals_flat_topk_even_with_heavy_rows():
    sae, x = make("batchtopk", relative_threshold=False), data(32)  # the raw rule
    x[3] *= 30.0  # one token wants far more than 2k latents: forces the widening path
    rows, cols, vals, _ = sae._batch_topk(x)
    pre = sae.pre_acts(x).detach()
    ref_vals, ref_flat = pre.reshape(-1).topk(32 * K)
    assert (rows == 3).sum() > 2 * K
    assert sorted((rows * F + cols).tolist()) == sorted(ref_flat[ref_vals > 0].tolist())
    assert bool((rows.diff() >= 0).all())
    torch.testing.assert_close(vals, pre[rows, cols])


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_bf16_selection_keeps_exact_values_and_nearly_the_same_latents(arch):
    exact, fast, x = (
        make(arch, d_sae=512, k=16),
        make(arch, d_sae=512, k=16, select_dtype="bfloat16"),
        data(64),
    )
    fast.load_state_dict(exact.state_dict())
    out_e, out_f = exact.training_forward(x), fast.training_forward(x)
    assert abs(out_e.loss.item() - out_f.loss.item()) < 0.02 * out_e.loss.item()
    acts_e, acts_f = exact.encode(x), fast.encode(x)
    same = (acts_e > 0) == (acts_f > 0)
    assert same.float().mean() > 0.995
    both = (acts_e > 0) & (acts_f > 0)
    torch.testing.assert_close(acts_f[both], acts_e[both])  # kept values are exact fp32


@pytest.mark.parametrize("arch", TOKENWISE)
def test_encoder_is_initialised_as_decoder_transpose(arch):
    sae = make(arch)
    assert sae.W_enc.shape == (D, F) and sae.W_dec.shape == (F, D)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    start = getattr(sae.cfg, "decoder_start_norm", 1.0)  # 0.1: the k-sparse SAEs' free rows
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((F,), start))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_training_step_matches_cpu_in_float64(arch):
    cpu = make(arch, dtype="float64")
    gpu = make(arch, dtype="float64").cuda()
    x, dead = data().double(), torch.arange(F) % 3 == 0
    out_c = cpu.training_forward(x, dead_mask_F=dead)
    out_g = gpu.training_forward(x.cuda(), dead_mask_F=dead.cuda())
    out_c.loss.backward()
    out_g.loss.backward()
    torch.testing.assert_close(out_g.loss.cpu(), out_c.loss)
    for (name, p_c), p_g in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p_g.grad.cpu(), p_c.grad, msg=name)


@pytest.mark.parametrize("arch", TOKENWISE)
def test_encode_accepts_leading_dims(arch):
    sae, x = make(arch), data(24)
    sae.training_forward(x)
    torch.testing.assert_close(sae(x.view(4, 6, D)).view(24, D), sae(x))


def test_k_only_constrains_architectures_that_use_it():
    assert SAEConfig.build(architecture="relu", d_in=4, d_sae=8).k == 32  # k unused by relu
    with pytest.raises(ValueError, match="k"):
        SAEConfig.build(architecture="batchtopk", d_in=4, d_sae=8)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_runs_under_bf16_autocast(arch):
    sae, x = make(arch), data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae.training_forward(x, dead_mask_F=torch.arange(F) % 2 == 0)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in sae.parameters())


def test_a_bf16_topk_step_on_the_cpu_equals_the_float32_step_away_from_near_ties():
    """TopK under CPU bf16 autocast (the default on CPUs with native bf16): the bf16 matmul
    only picks the latents, so on rows whose k-th and (k+1)-th pre-activations (float64
    oracle) are well apart the loss and every gradient equal the float32 step's; the backward
    may run inside autocast too."""
    ref, x = make("topk"), data(n=256)
    with torch.no_grad():
        pre = (x.double() - ref.b_dec.double()) @ ref.W_enc.double() + ref.b_enc.double()
        top = pre.topk(K + 1, dim=-1).values
        x = x[(top[:, K - 1] - top[:, K]) > 0.02 * top[:, 0].abs()]  # no near tie at the k-th place
    assert len(x) >= 64
    sae = copy.deepcopy(ref)
    out32 = ref.training_forward(x)
    out32.loss.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = sae.training_forward(x)
        out16.loss.backward()  # inside autocast: the sparse products must stay float32
    torch.testing.assert_close(out16.loss, out32.loss, rtol=1e-5, atol=1e-6)
    for (name, p16), p32 in zip(sae.named_parameters(), ref.parameters()):
        assert p16.grad.dtype == torch.float32, name
        torch.testing.assert_close(p16.grad, p32.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_a_bf16_step_may_run_its_backward_inside_autocast(arch):
    ref, x = make(arch), data()
    out32 = ref.training_forward(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = make(arch).training_forward(x)
        out16.loss.backward()
    assert float(out16.loss.detach()) == pytest.approx(float(out32.loss.detach()), rel=0.02)  # near ties may differ


def test_multi_topk_adds_the_4k_reconstruction_term():
    sae, x = make("topk", multi_topk=True), data()
    out = sae.training_forward(x)
    pre = sae.pre_acts(x).detach()
    v, i = pre.topk(4 * K, dim=-1)
    x_hat4 = (
        torch.zeros_like(pre).scatter(-1, i, v.relu()) @ sae.W_dec.detach() + sae.b_dec.detach()
    )
    ref = (x_hat4 - x).pow(2).sum(-1).mean()
    assert out.losses["multi_topk_mse"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.losses["mse"].item() + ref.item() / 8, rel=1e-5)


def test_jumprelu_l0_gradient_is_the_rectangle_kernel_estimate():
    eps = 0.5
    sae, x = make("jumprelu", jumprelu_bandwidth=eps), data()
    out = sae.training_forward(x)
    (g,) = torch.autograd.grad(out.losses["l0"], sae.log_threshold)
    pre, theta = sae.pre_acts(x).detach().double(), sae.threshold.detach().double()
    in_window = ((pre - theta) / eps).abs() < 0.5
    ref = -(in_window.double() / eps).sum(0) / len(x) * theta  # d/dlog(theta) = theta * d/dtheta
    torch.testing.assert_close(g.double(), ref, rtol=1e-5, atol=1e-6)


def test_batchtopk_auxk_selection_is_the_top_dead_latents_of_each_row():
    sae, x = make("batchtopk", relative_threshold=False), data(32)  # the raw rule
    x[3] *= 30.0
    dead = torch.arange(F) % 3 == 0
    *_, (aux_pre, aux_idx) = sae._batch_topk(x, dead, 5)
    pre = sae.pre_acts(x).detach()
    ref = pre.masked_fill(~dead, -float("inf")).topk(5, dim=-1)
    assert torch.equal(aux_idx.sort(-1).values, ref.indices.sort(-1).values)
    torch.testing.assert_close(aux_pre, pre.gather(1, aux_idx))


def _train_on_synthetic(arch, steps=300, **kw):
    """A few hundred Adam steps on `synthetic` (64 true directions in D=16), as the trainer does
    them; returns (sae, fraction of latents that never fired over the last 50 steps)."""
    sae = make(arch, d_sae=128, **kw)
    with torch.no_grad():
        sae.b_enc.zero_()
    sae.init_from_data_(synthetic(2048, 99))
    _, last_fired = _adam_steps(sae, steps=steps, batch=512, lr=5e-3, dead_after=25)
    return sae, float((steps - 1 - last_fired > 50).float().mean())


def _mmcs(sae) -> float:
    dirs = torch.randn(64, D, generator=torch.Generator().manual_seed(123))
    W = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    return float((torch.nn.functional.normalize(dirs, dim=1) @ W.T).max(1).values.mean())


@torch.no_grad()
def _fvu(sae, x) -> float:
    return float((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_batchtopk_trains_like_topk_with_few_dead_latents():
    """Same budget: BatchTopK reconstructs about as well as TopK and keeps its latents alive.
    (Its dictionary is still further from the truth after this short run: mmcs ~0.8 vs ~0.97.)"""
    topk, _ = _train_on_synthetic("topk", k=3)
    btk, dead = _train_on_synthetic("batchtopk", k=3)
    x = synthetic(1024, 10_000)
    assert dead < 0.25, dead
    assert _fvu(btk, x) < 1.5 * _fvu(topk, x), (_fvu(btk, x), _fvu(topk, x))
    assert _mmcs(btk) > 0.7, _mmcs(btk)


def test_jumprelu_init_from_data_starts_at_l0_k():
    sae = make("jumprelu")
    x = synthetic(2048, 7)
    sae.init_from_data_(x)
    l0 = (sae.encode(x) > 0).sum(-1).float().mean().item()
    assert K / 1.5 < l0 < K * 1.5, l0


def test_jumprelu_short_run_reaches_target_l0():
    sae, _ = _train_on_synthetic(
        "jumprelu",
        k=3,
        jumprelu_bandwidth=JumpReLUConfig.jumprelu_bandwidth,
        l0_coeff=JumpReLUConfig.l0_coeff,
    )
    l0 = (sae.encode(synthetic(1024, 10_000)) > 0).sum(-1).float().mean().item()
    assert 3 / 2 < l0 < 3 * 2, l0
