"""Dashboards of a transcoder: the activations are its codes of the *input* hook's rows, the
logit effects go through its decoder (the output side), and the site says which is which."""

import json
import re

import numpy as np
import pytest
import torch

from saelens_lite.dashboards import build_dashboard
from saelens_lite.features.logits import logit_effects

IN, OUT = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"


def read_jsonp(path, fn: str):
    m = re.fullmatch(rf"{fn}\((?:(\d+),)?(.*)\);\n", path.read_text(encoding="ascii"), re.S)
    assert m, f"{path} is not a {fn}(...) call"
    return json.loads(m.group(2))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.lm.load import load_model
    from saelens_lite.saes import SAE, SAEConfig

    lm = load_model("tiny-llama")
    tmp = tmp_path_factory.mktemp("tc_site")
    # the target first: the dashboard must still read the transcoder's input hook
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[OUT, IN], tokens=800, context_size=40),
                    tmp / "cache", model=lm, progress=False)
    torch.manual_seed(0)
    tc = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=48, k=4, hook_name=IN, target_hook=OUT,
                                   skip=True))
    with torch.no_grad():
        tc.b_enc.normal_()  # a transcoder's encoder ignores b_dec: make the input side matter
        tc.b_dec.normal_()
    build_dashboard(tc, cache, tmp / "site", model=lm, progress=False, shard_features=48, n_top=5,
                    n_quantiles=2, n_per_quantile=2, window_before=3, window_after=1)
    return tc, cache, lm, tmp / "site"


def test_activations_are_the_codes_of_the_input_hook(built):
    tc, cache, _, site = built
    meta = read_jsonp(site / "data" / "meta.js", "saeMeta")
    assert (meta["hook"], meta["target_hook"]) == (IN, OUT)
    feats = read_jsonp(site / "data" / "f" / "00000.js", "saeShard")["features"]
    with torch.no_grad():
        A_in = tc.encode(torch.from_numpy(np.asarray(cache.activations(IN)[:], np.float32))).numpy()
        A_out = tc.encode(torch.from_numpy(np.asarray(cache.activations(OUT)[:], np.float32))).numpy()
    assert [f["n"] for f in feats] == [int((A_in[:, i] > 0).sum()) for i in range(48)]
    np.testing.assert_allclose([f["max"] for f in feats], A_in.max(0), rtol=1e-3)
    assert [f["n"] for f in feats] != [int((A_out[:, i] > 0).sum()) for i in range(48)]  # the oracle bites


def test_logit_effects_go_through_the_decoder_and_the_page_says_so(built):
    tc, _, lm, site = built
    feats = read_jsonp(site / "data" / "f" / "00000.js", "saeShard")["features"]
    pv, pi, nv, ni = logit_effects(tc.W_dec.detach(), lm, 10)
    W = tc.W_dec.detach() * lm.model.model.norm.weight.detach()  # an independent oracle
    top = (W @ lm.model.lm_head.weight.detach().T).topk(10, dim=1).indices
    assert (torch.from_numpy(pi) == top).all()
    assert [f["pos"][0] for f in feats] == pi.tolist()
    app = (site / "assets" / "app.js").read_text()
    assert "Through the decoder direction, written to" in app and "(transcoder)" in app
