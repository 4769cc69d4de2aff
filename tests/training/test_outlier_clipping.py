"""TrainConfig.outlier_norm_ratio: training rows above r x the median norm are trained on with
their norm capped (training.hook_state.clip_rows). Tiny shapes (D=16, F=64), CPU only."""

from __future__ import annotations

import logging

import pytest
import torch

from saelens_lite.saes import REGISTRY
from saelens_lite.training import TrainConfig, train
from saelens_lite.training.hook_state import clip_norm, clip_rows

D, F = 16, 64


def data(n: int = 1000, n_outliers: int = 6, seed: int = 0) -> torch.Tensor:
    """Sparse codes over 64 directions plus an offset, with a few rows scaled 40x (massive
    activations)."""
    g = torch.Generator().manual_seed(seed)
    dirs_FD = torch.randn(F, D, generator=g)
    x_ND = ((torch.rand(n, F, generator=g) < 0.06) * torch.rand(n, F, generator=g)) @ dirs_FD + 3.0
    x_ND[torch.randperm(n, generator=g)[:n_outliers]] *= 40.0
    return x_ND


def cfg(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(architecture="topk", latents=F, k=4, lr=3e-3, batch_size=100, tokens=100 * 12,
                warmup_steps=2, log_every=4, checkpoint_every=0, init_sample_tokens=4096,
                out_dir=str(tmp_path / name), progress=False, seed=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_clip_rows_caps_the_norm_of_long_rows_and_keeps_the_rest_and_every_direction():
    g = torch.Generator().manual_seed(0)
    x_BD = torch.randn(50, D, generator=g, dtype=torch.float64)
    x_BD[:5] *= 30.0
    x_BD[5] = 0.0
    cap = 2.0 * float(x_BD.norm(dim=-1).median())
    y_BD = clip_rows(x_BD, cap)
    n_x, n_y = x_BD.norm(dim=-1), y_BD.norm(dim=-1)
    long = n_x > cap
    assert long.sum() >= 5
    torch.testing.assert_close(n_y[long], torch.full_like(n_y[long], cap), rtol=1e-12, atol=0)
    assert torch.equal(y_BD[~long], x_BD[~long])  # untouched, zero row included
    cos = torch.nn.functional.cosine_similarity(x_BD[long], y_BD[long], dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-12)
    assert clip_norm(x_BD, 2.0) == pytest.approx(cap)


def test_training_with_clipping_equals_training_on_the_clipped_rows(tmp_path):
    """Oracle: the same run on data clipped beforehand (no normalisation, the init sample is
    every row, so both runs see the same cap and the same rows)."""
    x_ND = data()
    cap = clip_norm(x_ND, 5.0)
    assert int((x_ND.norm(dim=-1) > cap).sum()) == 6
    a = train(cfg(tmp_path, "a", outlier_norm_ratio=5.0, normalize_activations=False), x_ND)
    off = dict(normalize_activations=False, outlier_norm_ratio=None)
    b = train(cfg(tmp_path, "b", **off), clip_rows(x_ND, cap))
    c = train(cfg(tmp_path, "c", **off), x_ND)
    for name, p in a.state_dict().items():
        torch.testing.assert_close(p, b.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.allclose(a.W_dec, c.W_dec, atol=1e-3)  # the clip changed the run


def test_the_cap_is_measured_after_normalisation_and_logged(tmp_path, caplog):
    x_ND = data()
    with caplog.at_level(logging.INFO, logger="saelens_lite.training.trainer"):
        train(cfg(tmp_path, "a", outlier_norm_ratio=5.0), x_ND)
    line = next(r.getMessage() for r in caplog.records if "rows clipped at norm" in r.getMessage())
    scale = D ** 0.5 / float(x_ND.norm(dim=-1).mean())
    logged = float(line.rsplit("rows clipped at norm ", 1)[1])
    assert logged == pytest.approx(clip_norm(x_ND * scale, 5.0), rel=1e-3)


def test_a_transcoder_trains_on_its_pairs_as_they_are(tmp_path, caplog):
    x_ND = data()
    pairs = {"x": x_ND, "y": torch.tanh(x_ND)}
    with caplog.at_level(logging.INFO, logger="saelens_lite.training.trainer"):
        a = train(cfg(tmp_path, "a", outlier_norm_ratio=5.0, hooks=["x"], target_hook="y"), pairs)
    b = train(cfg(tmp_path, "b", hooks=["x"], target_hook="y"), pairs)
    assert not any("rows clipped" in r.getMessage() for r in caplog.records)
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name


@pytest.mark.parametrize("arch", sorted(a for a, c in REGISTRY.items() if not c.rank_selected and c.tokenwise))
def test_threshold_architectures_train_on_their_rows_as_they_are(tmp_path, arch):
    """Only rank-selected codes (TopK) are clipped: a threshold learnt on capped rows would let
    many latents fire on the full-norm row."""
    x_ND = data()
    a = train(cfg(tmp_path, "a", architecture=arch, outlier_norm_ratio=5.0, tokens=100 * 4), x_ND)
    b = train(cfg(tmp_path, "b", architecture=arch, outlier_norm_ratio=None, tokens=100 * 4), x_ND)
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), (arch, name)


@pytest.mark.parametrize("value", [0.5, float("nan"), float("inf"), -2.0])
def test_a_ratio_below_one_or_not_finite_is_refused_naming_the_field(tmp_path, value):
    with pytest.raises(ValueError, match="outlier_norm_ratio"):
        cfg(tmp_path, "x", outlier_norm_ratio=value)


def test_the_train_flag_takes_a_ratio_or_none_and_refuses_other_text(capsys):
    from saelens_lite.cli import build_parser
    from saelens_lite.cli.train import config_from_args

    def parsed(*flags):
        return config_from_args(build_parser().parse_args(["train", *flags])).outlier_norm_ratio

    assert parsed() == TrainConfig().outlier_norm_ratio == 5.0
    assert parsed("--outlier-norm-ratio", "7.5") == 7.5
    assert parsed("--outlier-norm-ratio", "none") is None
    assert parsed("--outlier-norm-ratio", "None", "--lr", "1e-3") is None
    with pytest.raises(SystemExit):
        parsed("--outlier-norm-ratio", "big")
    assert "invalid float value: 'big'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # "none" stays an error where None is not a value
        build_parser().parse_args(["train", "--batch-size", "none"])
