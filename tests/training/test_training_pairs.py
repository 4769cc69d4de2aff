"""Several transcoders in one run (``hooks`` / ``target_hook`` patterns): one model forward per
batch feeds every pair, each pair's coder equals its one-pair run on the same tokens and seed,
each is saved to its own folder, resume is exact, and bad patterns or pairs fail in one line
before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import DiesAfter

from saelens_lite.training import ArraySource, TrainConfig, train
from saelens_lite.training.data import StreamSource

pytestmark = pytest.mark.usefixtures("one_thread")

IN, OUT = "blocks.*.hook_mlp_in", "blocks.*.hook_mlp_out"
LAYERS = 4  # tiny-llama's blocks
STREAM = dict(dataset="builtin:pydocs", context_size=32, model_batch_size=4, buffer_contexts=8)


def cfg(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(architecture="topk", hooks=[IN], target_hook=OUT, latents=96, k=6, lr=3e-3, batch_size=64,
                tokens=64 * 8, warmup_steps=2, log_every=4, checkpoint_every=0, init_sample_tokens=256,
                b_dec_init="mean", out_dir=str(tmp_path / name), progress=False, seed=3)
    return TrainConfig.from_dict(base | kw)


class ForwardCounter:
    """Counts forwards of a model through a public forward pre-hook."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, _module, _args):
        self.n += 1


def test_pairs_from_one_stream_equal_one_pair_runs_with_one_forward_per_batch(tmp_path, tiny_llama):
    counter = ForwardCounter(tiny_llama.model)
    src = StreamSource(tiny_llama, [IN, OUT], **STREAM)
    assert src.hooks == [f"blocks.{i}.hook_mlp_{s}" for s in ("in", "out") for i in range(LAYERS)]
    next(src.batches(64, seed=0))  # one chunk of 8 contexts in model batches of 4: 2 forwards
    assert counter.n == STREAM["buffer_contexts"] // STREAM["model_batch_size"]

    counter.n = 0
    together = train(cfg(tmp_path, "all"), StreamSource(tiny_llama, [IN, OUT], **STREAM))
    forwards_all = counter.n
    assert sorted(together) == [f"blocks.{i}.hook_mlp_in" for i in range(LAYERS)]
    for i in range(LAYERS):
        x, y = f"blocks.{i}.hook_mlp_in", f"blocks.{i}.hook_mlp_out"
        counter.n = 0
        alone = train(cfg(tmp_path, f"l{i}", hooks=[x], target_hook=y), StreamSource(tiny_llama, [x, y], **STREAM))
        assert counter.n == forwards_all  # N pairs cost the forwards of one
        assert (together[x].cfg.hook_name, together[x].cfg.target_hook) == (x, y)
        for name, w in alone.state_dict().items():
            torch.testing.assert_close(together[x].state_dict()[name], w, rtol=1e-5, atol=1e-6, msg=name)
        saved = json.loads((tmp_path / "all" / x / "cfg.json").read_text())
        assert (saved["hook_name"], saved["target_hook"]) == (x, y)
    counter.handle.remove()
    # the layers' coders differ (each fits its own MLP), though each started from the same draw
    assert not torch.allclose(together["blocks.0.hook_mlp_in"].W_dec, together["blocks.1.hook_mlp_in"].W_dec)
    run = json.loads((tmp_path / "all" / "config.json").read_text())
    assert (run["hooks"], run["sae"]["target_hook"]) == ([IN], OUT)


def mlp_like(n: int = 900, layers: int = 3) -> dict[str, torch.Tensor]:
    """Per layer an input and a target that is a fixed non-linear map of it (rows are tokens)."""
    g = torch.Generator().manual_seed(0)
    data = {}
    for i in range(layers):
        x = torch.randn(n, 16, generator=g)
        data[f"blocks.{i}.hook_mlp_in"] = x
        data[f"blocks.{i}.hook_mlp_out"] = torch.relu(x @ torch.randn(16, 16, generator=g)) * (i + 1)
    return data


def test_a_resumed_pairs_run_equals_an_uninterrupted_one(tmp_path):
    data = mlp_like()
    kw = dict(checkpoint_every=64 * 10, tokens=64 * 40, latents=48, k=4)
    full = train(cfg(tmp_path, "full", **kw), ArraySource(data))
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path, "cut", **kw), DiesAfter(data))
    resumed = train(cfg(tmp_path, "cut", resume=True, **kw), ArraySource(data))
    assert sorted(resumed) == sorted(full) == [f"blocks.{i}.hook_mlp_in" for i in range(3)]
    for h in full:
        for name, w in full[h].state_dict().items():
            torch.testing.assert_close(resumed[h].state_dict()[name], w, rtol=0, atol=0, msg=f"{h} {name}")
        assert full[h].cfg.target_hook == h.replace("_in", "_out")


def test_the_cli_trains_every_pair_of_a_cache_into_its_own_folder(tmp_path, capsys):
    from helpers import write_cache

    from saelens_lite.cli import main

    cache = write_cache(tmp_path / "c", {h: a.numpy() for h, a in mlp_like().items()})
    assert main(["train", "--activations", str(cache), "--hooks", IN, "--target-hook", OUT, "--latents", "48",
                 "--k", "4", "--tokens", "1024", "--batch-size", "128", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    for i in range(3):
        saved = json.loads((tmp_path / "run" / f"blocks.{i}.hook_mlp_in" / "cfg.json").read_text())
        assert (saved["hook_name"], saved["target_hook"]) == (f"blocks.{i}.hook_mlp_in", f"blocks.{i}.hook_mlp_out")
    assert capsys.readouterr().out.count("saved under") == 3


def test_a_set_of_blocks_trains_those_pairs_only(tmp_path):
    got = train(cfg(tmp_path, "run", hooks=["blocks.[0,2].hook_mlp_in"], target_hook="blocks.[0,2].hook_mlp_out",
                    tokens=64 * 2, latents=48, k=4), mlp_like())
    assert {h: sae.cfg.target_hook for h, sae in got.items()} == {
        "blocks.0.hook_mlp_in": "blocks.0.hook_mlp_out", "blocks.2.hook_mlp_in": "blocks.2.hook_mlp_out"}


@pytest.mark.parametrize("kw, match", [
    (dict(hooks=["blocks.[1-3].hook_mlp_in"]), r"hooks='blocks.\[1-3\].hook_mlp_in': .* no hook for number\(s\) \[3\]"),
    (dict(hooks=["blocks.*.hook_mlp_inn"]), r"hooks='blocks.\*.hook_mlp_inn': hook pattern .* matches no hook"),
    (dict(target_hook="blocks.*.hook_mlp_outt"), r"target_hook='blocks.\*.hook_mlp_outt': hook pattern .* matches no hook"),
    (dict(hooks=["blocks.1.hook_mlp_in", "blocks.2.hook_mlp_in"]),
     r"target_hook='blocks.\*.hook_mlp_out': 3 target\(s\) .* for 2 input hook\(s\)"),
    (dict(hooks=[OUT], target_hook=IN),
     "target_hook='blocks.0.hook_mlp_in': comes before its input hook 'blocks.0.hook_mlp_out'"),
    (dict(hooks=[IN, "blocks.1.hook_mlp_in"]), r"name \['blocks.1.hook_mlp_in'\] more than once"),
])
def test_bad_patterns_and_pairs_fail_in_one_line_before_writing(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match) as e:
        train(cfg(tmp_path, "run", **kw), mlp_like())
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_named_target_before_its_input_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="target_hook='blocks.1.hook_mlp_out': comes before its input hook"):
        cfg(tmp_path, "run", hooks=["blocks.2.hook_mlp_in"], target_hook="blocks.1.hook_mlp_out")


def test_a_pattern_matching_no_hook_of_the_model_names_it(tmp_path, tiny_llama):
    with pytest.raises(ValueError, match=r"hook pattern 'blocks.\*.hook_mlp_inn' matches no hook.*closest"):
        StreamSource(tiny_llama, ["blocks.*.hook_mlp_inn"], **STREAM)
