"""Training curves: the plotted lines are the metrics file's values, the PNG is written at each
checkpoint and at the end of training, and a plotting failure never stops a run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from saelens_lite.saes import SAEConfig
from saelens_lite.training import TrainConfig, curves, train
from saelens_lite.training.curves import CURVES_NAME, plot_training_curves, write_training_curves

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KEYS = ("loss", "fvu", "l0", "dead_fraction")


def record(hook: str, step: int, **vals) -> dict:
    base = {"hook": hook, "step": step, "tokens": step * 100, "mse": 0.5, "lr": 1e-3, "sparsity_scale": 1.0}
    return {**base, **vals}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A hand-written run: two hooks, three logged steps, and a last line cut short."""
    run = tmp_path / "run"
    run.mkdir()
    recs = []
    for step, (loss, fvu, l0, dead) in zip((10, 20, 30), ((2.0, 0.9, 40.0, 0.0), (1.0, 0.5, 20.5, 0.125),
                                                           (0.75, 0.25, 12.0, 0.25))):
        recs.append(record("blocks.0.hook_resid_post", step, loss=loss, fvu=fvu, l0=l0, dead_fraction=dead))
        recs.append(record("blocks.1.hook_mlp_out", step, loss=3 * loss, fvu=fvu / 2, l0=l0 + 1,
                           dead_fraction=dead / 2))
    text = "".join(json.dumps(r) + "\n" for r in recs) + '{"hook": "blocks.0.hook_resid_post", "st'
    (run / "metrics.jsonl").write_text(text)
    (run / "config.json").write_text(json.dumps({"architecture": "topk", "k": 7, "dead_window_tokens": 5000}))
    return run


def lines_by_label(ax) -> dict[str, tuple[list, list]]:
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}


def test_each_panel_plots_the_file_values_against_tokens_one_line_per_hook(run_dir):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()[:-1]]
    fig = plot_training_curves(run_dir)
    axes = fig.axes
    assert len(axes) == 4
    for ax, key in zip(axes, KEYS):
        lines = lines_by_label(ax)
        assert sorted(lines) == ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
        for hook, (xs, ys) in lines.items():
            mine = [r for r in recs if r["hook"] == hook]
            assert xs == [r["tokens"] for r in mine], (key, hook)
            assert ys == [r[key] for r in mine], (key, hook)
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "linear", "linear"]
    assert all("tokens" in ax.get_xlabel() for ax in axes[2:])
    assert all(ax.get_ylabel() for ax in axes)


def test_the_title_names_architecture_k_hooks_and_says_the_fvu_is_in_sample(run_dir):
    title = plot_training_curves(run_dir).get_suptitle()
    assert "topk SAE, k=7" in title and "blocks.0.hook_resid_post, blocks.1.hook_mlp_out" in title
    assert "in-sample" in title and "3,000 tokens" in title
    (run_dir / "config.json").write_text(json.dumps({"architecture": "relu", "k": 7}))
    title = plot_training_curves(run_dir).get_suptitle()
    assert "relu SAE" in title and "k=" not in title  # relu does not read k (REGISTRY's uses_k)
    (run_dir / "config.json").write_text(json.dumps({"architecture": "topk", "k": 7, "skip": True,
                                                     "target_hook": "blocks.1.hook_mlp_out"}))
    title = plot_training_curves(run_dir).get_suptitle()
    assert "topk transcoder with skip, k=7" in title and "-> blocks.1.hook_mlp_out" in title
    nested = TrainConfig(sae=SAEConfig.build(architecture="topk", k=7, skip=True,
                                             target_hook="blocks.1.hook_mlp_out"), hooks=["h"])
    (run_dir / "config.json").write_text(json.dumps(nested.to_dict()))  # today's config.json
    assert plot_training_curves(run_dir).get_suptitle() == title


def test_a_loss_not_positive_or_within_a_4x_range_is_drawn_on_a_linear_axis(run_dir):
    recs = [record("h", s, loss=v, fvu=f, l0=3.0, dead_fraction=0.0)
            for s, v, f in ((1, 1.0, 0.8), (2, -0.5, 0.21), (3, 0.1, 0.19))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    loss, fvu = plot_training_curves(run_dir).axes[:2]
    assert loss.get_yscale() == "linear" and lines_by_label(loss)["h"][1] == [1.0, -0.5, 0.1]
    assert loss.get_ylim()[0] < -0.5 and loss.get_ylim()[1] > 1.0  # every point inside the panel
    assert fvu.get_yscale() == "log"  # 0.8 / 0.19 >= 4
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({**r, "fvu": 0.3}) + "\n" for r in recs))
    assert plot_training_curves(run_dir).axes[1].get_yscale() == "linear"


def test_the_png_is_written_atomically_and_is_a_valid_image(run_dir):
    path = write_training_curves(run_dir)
    assert path == run_dir / CURVES_NAME
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size == (1100, 750)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.jsonl", CURVES_NAME]


def test_no_record_is_an_error_for_the_plot_and_silence_for_the_refresh(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no metric record"):
        plot_training_curves(tmp_path)
    with caplog.at_level("WARNING"):
        assert curves.refresh_training_curves(tmp_path) is None
    assert not caplog.records and not (tmp_path / CURVES_NAME).exists()


# --- in training ------------------------------------------------------------------------------


def tiny_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(architecture="topk", latents=32, k=4, lr=3e-3, batch_size=64, tokens=64 * 30,
                warmup_steps=2, log_every=5, checkpoint_every=64 * 10, init_sample_tokens=256,
                out_dir=str(tmp_path / "run"), progress=False)
    return TrainConfig.from_dict({**base, **kw})


def test_training_writes_the_png_at_each_checkpoint_and_refreshes_it_at_the_end(tmp_path, monkeypatch):
    import saelens_lite.training.trainer as trainer

    seen = []  # (records in metrics.jsonl, PNG bytes) after each refresh

    def spy(run_dir):
        path = curves.refresh_training_curves(run_dir)
        seen.append((len((Path(run_dir) / "metrics.jsonl").read_text().splitlines()), path.read_bytes()))
        return path

    monkeypatch.setattr(trainer, "refresh_training_curves", spy)
    x = torch.randn(600, 16, generator=torch.Generator().manual_seed(0))
    train(tiny_config(tmp_path), x)
    # checkpoints after steps 10 and 20 (2 and 4 records), then the end (6 records)
    assert [n for n, _ in seen] == [2, 4, 6]
    for _, png in seen:
        assert png.startswith(PNG_MAGIC)
        Image.open(io.BytesIO(png)).verify()
    assert seen[0][1] != seen[1][1] != seen[2][1]
    final = (tmp_path / "run" / CURVES_NAME).read_bytes()
    assert final == seen[-1][1]
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_a_plotting_failure_logs_a_warning_and_training_still_finishes(tmp_path, monkeypatch, caplog):
    def broken(run_dir, out=None):
        raise OSError("disk full")

    monkeypatch.setattr(curves, "write_training_curves", broken)
    x = torch.randn(600, 16, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("WARNING", logger="saelens_lite.training.curves"):
        sae = train(tiny_config(tmp_path, tokens=64 * 12), x)
    assert sae is not None and (tmp_path / "run" / "activations" / "sae.safetensors").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.name == "saelens_lite.training.curves"]
    assert len(warnings) == 2 and all("OSError: disk full" in w for w in warnings)  # checkpoint, end


def test_a_run_that_fails_mid_way_still_gets_its_curves(tmp_path, caplog):
    def poison(step, xs):  # the inputs of step 10 (1-based) are NaN: training stops there
        if step == 9:
            for x_BD in xs.values():
                x_BD.fill_(float("nan"))

    x = torch.randn(600, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match="step 10"), \
            caplog.at_level("WARNING", logger="saelens_lite.training.curves"):
        train(tiny_config(tmp_path, checkpoint_every=0), x, on_batch=poison)
    assert not caplog.records
    assert (tmp_path / "run" / CURVES_NAME).read_bytes().startswith(PNG_MAGIC)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs][-1] == 10 and recs[-1]["loss"] != recs[-1]["loss"]  # NaN logged
    l0 = plot_training_curves(tmp_path / "run").axes[2]
    assert l0.get_ylim() == (0.0, pytest.approx(1.1 * 4))  # scaled to the finite L0 (k=4)


def test_a_non_finite_value_leaves_the_panel_scaled_to_the_finite_ones(run_dir):
    bad = record("blocks.0.hook_resid_post", 40, loss=float("nan"), fvu=float("nan"), l0=float("inf"),
                 dead_fraction=0.25)
    text = (run_dir / "metrics.jsonl").read_text().rsplit("\n", 1)[0] + "\n" + json.dumps(bad) + "\n"
    (run_dir / "metrics.jsonl").write_text(text)
    l0 = plot_training_curves(run_dir).axes[2]
    assert l0.get_ylim() == (0.0, pytest.approx(1.1 * 41.0))  # the largest finite L0 (40 + 1), not inf
