"""``dead_min_rate``: latents that fire, but more rarely than a rate, join AuxK's dead mask
(training.dead_latents). The rate estimate against its formula on latents of known rates, the
rule off leaves every mask as before, training with it resumes bit-identically, and bad values
name the field."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_training import cfg, synthetic

from saelens_lite.training import train
from saelens_lite.training.checkpoint import list_checkpoints
from saelens_lite.training.dead_latents import DeadLatentTracker


def bernoulli_batches(p_F: torch.Tensor, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.rand(p_F.shape, generator=g) < p_F


def test_latents_below_the_rate_are_dead_those_above_are_not_and_silence_still_counts():
    B, window, r_min = 1024, 200 * 1024, 1e-4
    # per-token rates of 8 latents: 5 far below 1e-4, 3 far above; one latent never fires
    rate_F = torch.tensor([0.0, 1e-6, 1e-5, 2e-5, 4e-5, 4e-4, 1e-3, 1e-2], dtype=torch.float64)
    p_F = 1 - (1 - rate_F) ** B  # P(fired in a batch of B) for tokens independent at that rate
    t = DeadLatentTracker(8, window, min_rate=r_min)
    plain = DeadLatentTracker(8, window)
    for i, fired in enumerate(bernoulli_batches(p_F, 600)):
        t.update(fired, B)
        plain.update(fired, B)
        if (i + 1) * B < window:  # not a whole window yet: only silence could count, and none has
            assert t.rare_mask() is None and torch.equal(t.dead_mask(), plain.dead_mask())
    assert t.dead_mask().tolist() == [True] * 5 + [False] * 3
    # without the rule: the silent one (and 1e-6, ~0.2 firings per window), not the rare ones
    assert plain.dead_mask().tolist() == [True, True] + [False] * 6
    # the bias-corrected estimate of P(fired in a batch) against the truth, for the frequent ones
    q_F = t.fired_ema_F.double() / (1 - t.ema_decay)
    torch.testing.assert_close(q_F[5:], p_F[5:], atol=0.06, rtol=0)


def test_without_the_rule_the_tracker_keeps_no_rate_and_saves_as_before():
    t = DeadLatentTracker(4, 100)
    t.update(torch.tensor([True, False, False, False]), 60)
    assert t.fired_ema_F is None and t.rare_mask() is None
    assert set(t.state_dict()) == {"tokens_since_fired", "tokens_seen"}


def test_the_rate_estimate_survives_a_state_dict_round_trip_and_a_missing_one_is_refused():
    t = DeadLatentTracker(3, 300, min_rate=0.01)
    for fired in bernoulli_batches(torch.tensor([0.9, 0.2, 0.0]), 7):
        t.update(fired, 100)
    u = DeadLatentTracker(3, 300, min_rate=0.01)
    u.load_state_dict(t.state_dict())
    assert torch.equal(u.fired_ema_F, t.fired_ema_F) and u.ema_decay == t.ema_decay
    assert torch.equal(u.dead_mask(), t.dead_mask())
    with pytest.raises(ValueError, match="dead_min_rate"):
        u.load_state_dict(DeadLatentTracker(3, 300).state_dict())


@pytest.mark.parametrize("arch", ["topk", "matryoshka"])
def test_a_run_with_the_rate_rule_resumes_to_identical_weights_and_differs_from_one_without(tmp_path, arch):
    x = synthetic()
    kw = dict(architecture=arch, checkpoint_every=128 * 10, keep_checkpoints=5, dead_window_tokens=128 * 3)
    whole = train(cfg(tmp_path / "whole", dead_min_rate=0.05, **kw), x)
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    first, *later = list_checkpoints(tmp_path / "cut" / "run")  # steps 10, 20...: resume from step 10
    assert later
    for c in later:
        c.unlink()
    again = train(cfg(tmp_path / "cut", resume=True, dead_min_rate=0.05, **kw), x)
    for (name, p), q in zip(whole.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
    without = train(cfg(tmp_path / "without", **kw), x)
    assert not torch.equal(without.W_dec, whole.W_dec)  # the rule fed AuxK latents the silence rule did not
    logged = [json.loads(line) for line in (tmp_path / "whole" / "run" / "metrics.jsonl").read_text().splitlines()]
    rare = [r["rare_fraction"] for r in logged if "rare_fraction" in r]
    assert rare and all(0 <= f <= 1 for f in rare) and max(rare) > 0
    assert not any("rare_fraction" in line for line in (tmp_path / "without" / "run" / "metrics.jsonl").open())


@pytest.mark.parametrize("bad", [0, 1, -0.1, float("nan"), 2])
def test_a_bad_rate_names_the_field(tmp_path, bad):
    with pytest.raises(ValueError, match=r"dead_min_rate=.*rate in \(0, 1\)"):
        cfg(tmp_path, dead_min_rate=bad)
