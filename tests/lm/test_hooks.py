import contextlib
import copy

import pytest
import torch
import transformers

from saelens_lite.lm.hooks import (
    UNIFORM_SUFFIXES,
    UnknownHookError,
    capture,
    expand_hook_pattern,
    hook_depth,
    hook_widths,
    is_mlp_pair,
    list_hook_points,
    replace,
    replace_from,
    replace_mlp,
    resolve_hooks,
)
from saelens_lite.lm.load import load_model

N_LAYERS, D = 4, 64
FAMILIES = ["llama", "gpt2", "gpt_neox", "bert"]
# (attn_out, mlp_out) module paths of block 0, per family
SUBLAYERS = {
    "llama": ("model.layers.0.self_attn", "model.layers.0.mlp"),
    "gpt2": ("transformer.h.0.attn", "transformer.h.0.mlp"),
    "gpt_neox": ("gpt_neox.layers.0.attention", "gpt_neox.layers.0.mlp"),
    "bert": ("encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense"),
}

# the module whose input is block 0's MLP input
MLP_IN = {
    "llama": "model.layers.0.mlp",
    "gpt2": "transformer.h.0.mlp",
    "gpt_neox": "gpt_neox.layers.0.mlp",
    "bert": "encoder.layer.0.intermediate",
}


def tiny_neox():
    config = transformers.GPTNeoXConfig(
        vocab_size=320, hidden_size=D, intermediate_size=128, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, max_position_embeddings=512,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.GPTNeoXForCausalLM(config).eval()


def model_and_inputs(family):
    """A tiny model and a right-padded batch of two sequences (the second one shorter)."""
    if family == "gpt_neox":
        ids = torch.randint(3, 320, (2, 7), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0
        return tiny_neox(), {"input_ids": ids, "attention_mask": mask}
    lm = load_model(f"tiny-{family.replace('_', '-')}")
    inputs = lm.tokenizer(["a first sentence", "second"], return_tensors="pt", padding=True)
    return lm.model, dict(inputs)


def n_hooks(model):
    """Forward hooks registered on any submodule (capture and splice must remove theirs)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_hook_names_are_listed_in_depth_order_with_widths(family):
    model, _ = model_and_inputs(family)
    points = list_hook_points(model)
    assert [p.name for p in points] == [
        f"blocks.{i}.{s}" for i in range(N_LAYERS) for s in
        ("hook_resid_pre", "hook_attn_out", "hook_mlp_in", "hook_mlp_out", "hook_resid_post")
    ]
    assert {s for s in UNIFORM_SUFFIXES} == {p.name.split(".")[-1] for p in points}
    by_name = {p.name: p for p in points}
    assert (by_name["blocks.0.hook_attn_out"].module_path,
            by_name["blocks.0.hook_mlp_out"].module_path) == SUBLAYERS[family]
    assert by_name["blocks.0.hook_mlp_in"].module_path == MLP_IN[family]
    assert by_name["blocks.0.hook_mlp_in"].kind == "pre"
    assert by_name["blocks.2.hook_resid_pre"].kind == "pre"
    assert by_name["blocks.2.hook_resid_post"].layer == 2
    assert set(hook_widths(model, points).values()) == {D}


def test_base_model_without_lm_head_has_the_same_hook_names(tiny_llama):
    base = tiny_llama.model.model  # LlamaModel
    names = [p.name for p in list_hook_points(base)]
    assert names == [p.name for p in list_hook_points(tiny_llama.model)]
    assert resolve_hooks(base, ["blocks.1.hook_resid_post"])[0].module_path == "layers.1"


def test_raw_module_paths_are_hook_points_with_measured_widths(tiny_llama, tiny_gpt2):
    (point,) = resolve_hooks(tiny_llama.model, ["model.layers.2.mlp.up_proj"])
    assert (point.kind, point.layer) == ("post", 2)
    widths = hook_widths(tiny_llama.model, ["model.layers.2.mlp.up_proj", "blocks.0.hook_mlp_out"])
    assert widths == {"model.layers.2.mlp.up_proj": 128, "blocks.0.hook_mlp_out": D}
    assert hook_widths(tiny_gpt2.model, ["transformer.h.0.mlp.c_fc"]) == {
        "transformer.h.0.mlp.c_fc": 4 * D
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_matches_output_hidden_states(family):
    model, inputs = model_and_inputs(family)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    # Independent reference for the last block: HF applies the final norm to the last hidden
    # state of llama/gpt2/neox, so hidden_states[-1] is not the last block's raw output.
    last_block = resolve_hooks(model, [f"blocks.{N_LAYERS - 1}.hook_resid_post"])[0]
    seen = {}
    handle = dict(model.named_modules())[last_block.module_path].register_forward_hook(
        lambda _m, _a, out: seen.setdefault("out", out if torch.is_tensor(out) else out[0])
    )
    with torch.no_grad():
        model(**inputs)
    handle.remove()

    names = [f"blocks.{i}.{s}" for i in range(N_LAYERS)
             for s in ("hook_resid_pre", "hook_resid_post")]
    hooks_before = n_hooks(model)  # transformers installs its own output-capturing hooks
    acts = capture(model, inputs, names)
    for i in range(N_LAYERS):
        torch.testing.assert_close(acts[f"blocks.{i}.hook_resid_pre"], hidden[i])
        expected = seen["out"] if i == N_LAYERS - 1 else hidden[i + 1]
        torch.testing.assert_close(acts[f"blocks.{i}.hook_resid_post"], expected)
    if family == "bert":  # post-LN, no final norm: the last hidden state is the block output
        torch.testing.assert_close(acts[f"blocks.{N_LAYERS - 1}.hook_resid_post"], hidden[-1])
    assert all(t.shape == (*inputs["input_ids"].shape, D) for t in acts.values())
    assert not any(t.is_inference() for t in acts.values())
    assert n_hooks(model) == hooks_before


def test_early_stop_skips_later_blocks(tiny_llama):
    model = tiny_llama.model
    inputs = dict(tiny_llama.tokenizer(["hello there"], return_tensors="pt"))
    calls = []
    handle = model.model.layers[3].register_forward_hook(lambda *_: calls.append(1))
    try:
        early = capture(model, inputs, ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"])
        assert calls == []
        full = capture(model, inputs, ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"],
                       stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()
    assert early.keys() == full.keys()
    assert all(torch.equal(early[k], full[k]) for k in early)
    assert n_hooks(model) == 0


def block_mlp(model, family, layer):
    """Block ``layer``'s MLP as a function of its input, read from the HF modules directly."""
    if family == "bert":
        blk = model.encoder.layer[layer]
        return lambda x: blk.output.dense(blk.intermediate(x))
    return {"llama": lambda: model.model.layers[layer].mlp,
            "gpt2": lambda: model.transformer.h[layer].mlp,
            "gpt_neox": lambda: model.gpt_neox.layers[layer].mlp}[family]()


def block_norm(model, family, layer):
    """The norm that feeds block ``layer``'s MLP in the pre-LN families."""
    return {"llama": lambda: model.model.layers[layer].post_attention_layernorm,
            "gpt2": lambda: model.transformer.h[layer].ln_2,
            "gpt_neox": lambda: model.gpt_neox.layers[layer].post_attention_layernorm}[family]()


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_in_fed_through_the_mlp_gives_mlp_out(family):
    model, inputs = model_and_inputs(family)
    names = ["blocks.2.hook_mlp_in", "blocks.2.hook_mlp_out", "blocks.1.hook_resid_post"]
    acts = capture(model, inputs, names)
    with torch.no_grad():
        torch.testing.assert_close(block_mlp(model, family, 2)(acts["blocks.2.hook_mlp_in"]),
                                   acts["blocks.2.hook_mlp_out"])
        if family == "llama":  # sequential pre-LN: the norm of resid_pre + attn_out
            r = capture(model, inputs, ["blocks.2.hook_resid_pre", "blocks.2.hook_attn_out"])
            normed = block_norm(model, family, 2)(r["blocks.2.hook_resid_pre"] + r["blocks.2.hook_attn_out"])
            torch.testing.assert_close(normed, acts["blocks.2.hook_mlp_in"])
    assert not torch.allclose(acts["blocks.2.hook_mlp_in"], acts["blocks.1.hook_resid_post"])


def test_mlp_in_alone_stops_before_the_mlp_runs(tiny_llama):
    model = tiny_llama.model
    inputs = dict(tiny_llama.tokenizer(["hello there"], return_tensors="pt"))
    calls = []
    handle = model.model.layers[1].mlp.register_forward_hook(lambda *_: calls.append(1))
    try:
        acts = capture(model, inputs, ["blocks.1.hook_mlp_in"])
    finally:
        handle.remove()
    assert calls == [] and acts["blocks.1.hook_mlp_in"].shape[-1] == D


@pytest.mark.parametrize("family", FAMILIES)
def test_replace_mlp_by_itself_keeps_logits_and_by_zero_equals_zeroing_mlp_out(family):
    model, inputs = model_and_inputs(family)
    mlp = block_mlp(copy.deepcopy(model), family, 1)  # a copy: the hooked modules would recurse
    out = (lambda o: o.last_hidden_state) if family == "bert" else (lambda o: o.logits)
    with torch.no_grad():
        base = out(model(**inputs))
        with replace_mlp(model, 1, lambda x, _clean: mlp(x)):
            same = out(model(**inputs))
        with replace_mlp(model, 1, lambda _x, clean: torch.zeros_like(clean)):
            zeroed = out(model(**inputs))
        with replace(model, "blocks.1.hook_mlp_out", torch.zeros_like):
            zeroed_ref = out(model(**inputs))
    torch.testing.assert_close(same, base)
    assert not torch.allclose(zeroed, base)
    torch.testing.assert_close(zeroed, zeroed_ref)
    assert n_hooks(model) == n_hooks(model_and_inputs(family)[0])


def test_replace_from_sees_the_source_activation_and_refuses_a_later_source(tiny_llama):
    model = tiny_llama.model
    inputs = dict(tiny_llama.tokenizer(["abc def"], return_tensors="pt"))
    ref = capture(model, inputs, ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"])
    seen = []
    with torch.no_grad(), replace_from(model, "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre",
                                      lambda src, act: seen.append((src, act)) or act):
        model(**inputs)
    torch.testing.assert_close(seen[0][0], ref["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(seen[0][1], ref["blocks.2.hook_resid_pre"])
    with pytest.raises(RuntimeError, match="blocks.2.hook_mlp_out fired before blocks.3.hook_mlp_in"):
        with torch.no_grad(), replace_from(model, "blocks.3.hook_mlp_in", "blocks.2.hook_mlp_out",
                                          lambda src, act: act):
            model(**inputs)
    assert n_hooks(model) == 0
    assert is_mlp_pair("blocks.9.hook_mlp_in", "blocks.9.hook_mlp_out")
    assert not is_mlp_pair("blocks.9.hook_mlp_in", "blocks.10.hook_mlp_out")


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_attn_plus_mlp_plus_resid_pre_is_resid_post(family):
    model, inputs = model_and_inputs(family)
    acts = capture(model, inputs, [f"blocks.2.{s}" for s in UNIFORM_SUFFIXES])
    torch.testing.assert_close(
        acts["blocks.2.hook_resid_pre"] + acts["blocks.2.hook_attn_out"]
        + acts["blocks.2.hook_mlp_out"],
        acts["blocks.2.hook_resid_post"],
    )


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post",
                                  "blocks.1.hook_attn_out", "model.layers.1.mlp.down_proj"])
def test_replace_by_identity_keeps_logits_and_zeros_change_them(tiny_llama, hook):
    model = tiny_llama.model
    inputs = dict(tiny_llama.tokenizer(["splice me", "and me too"], return_tensors="pt",
                                       padding=True))
    with torch.no_grad():
        base = model(**inputs).logits
        with replace(model, hook, lambda x: x):
            same = model(**inputs).logits
        with replace(model, hook, torch.zeros_like):
            zeroed = model(**inputs).logits
        after = model(**inputs).logits
    assert torch.equal(same, base)
    assert not torch.allclose(zeroed, base)
    assert torch.equal(after, base)
    assert n_hooks(model) == 0


def test_replace_sees_the_captured_activation(tiny_gpt2):
    model = tiny_gpt2.model
    inputs = dict(tiny_gpt2.tokenizer(["abc"], return_tensors="pt"))
    seen = []
    with torch.no_grad(), replace(model, "blocks.2.hook_resid_pre", lambda x: seen.append(x) or x):
        model(**inputs)
    (expected,) = capture(model, inputs, ["blocks.2.hook_resid_pre"]).values()
    torch.testing.assert_close(seen[0], expected)


def test_unknown_hook_error_names_the_closest_hooks(tiny_llama):
    with pytest.raises(UnknownHookError, match="blocks.1.hook_resid_post") as err:
        resolve_hooks(tiny_llama.model, ["blocks.1.hook_resid_psot"])
    assert isinstance(err.value, ValueError)
    assert "'blocks.1.hook_resid_psot'" in str(err.value)
    with pytest.raises(UnknownHookError, match="model.layers.0.mlp"):
        capture(tiny_llama.model, {}, ["model.layers.0.mpl"])


@pytest.mark.slow
def test_smollm2_capture_matches_hidden_states_on_a_padded_batch(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    inputs = dict(tok(["The quick brown fox jumps over the lazy dog.", "Hello there."],
                      return_tensors="pt", padding=True))
    mask = inputs["attention_mask"].bool()
    assert not mask.all()  # the batch really is padded
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True).hidden_states[6]
    acts = capture(model, inputs, ["blocks.5.hook_resid_post"])
    torch.testing.assert_close(acts["blocks.5.hook_resid_post"][mask], expected[mask])


def test_hooks_are_removed_when_the_forward_fails(tiny_llama):
    model = tiny_llama.model
    before = n_hooks(model)
    with pytest.raises(ValueError):
        capture(model, {}, ["blocks.1.hook_resid_post"])  # no input_ids: the model raises
    assert n_hooks(model) == before


def test_a_pattern_expands_in_block_number_order_and_names_the_closest_when_it_matches_none():
    names = [f"blocks.{i}.hook_mlp_{s}" for i in (10, 2, 9) for s in ("in", "out")]
    assert expand_hook_pattern("blocks.*.hook_mlp_in", names) == [f"blocks.{i}.hook_mlp_in" for i in (2, 9, 10)]
    assert expand_hook_pattern("blocks.3.hook_mlp_in", names) == ["blocks.3.hook_mlp_in"]  # checked where read
    assert expand_hook_pattern("blocks.[2, 9-10].hook_mlp_out", names) == [f"blocks.{i}.hook_mlp_out" for i in (2, 9, 10)]
    with pytest.raises(UnknownHookError, match=r"no hook for number\(s\) \[3, 4\]"):
        expand_hook_pattern("blocks.[2-4].hook_mlp_in", names)
    with pytest.raises(UnknownHookError, match=r"'blocks.\*.hook_mlp_i' matches no hook.*closest: blocks"):
        expand_hook_pattern("blocks.*.hook_mlp_i", names)


def test_resolve_hooks_expands_patterns_over_the_model(tiny_llama):
    points = resolve_hooks(tiny_llama.model, ["blocks.*.hook_mlp_out", "blocks.0.hook_resid_pre"])
    assert [p.name for p in points] == [f"blocks.{i}.hook_mlp_out" for i in range(4)] + ["blocks.0.hook_resid_pre"]


def test_hook_depth_orders_uniform_names_as_the_forward_reaches_them(tiny_llama):
    names = [p.name for p in list_hook_points(tiny_llama.model)]
    assert sorted(names, key=hook_depth) == names
    assert hook_depth("model.layers.0.mlp") is None


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_names_resolve_one_at_a_time_to_the_listed_points_without_walking_the_model(family, monkeypatch):
    model, inputs = model_and_inputs(family)
    listed = list_hook_points(model)
    raw = [n for n, _ in model.named_modules() if n]
    mlp_in = next(p for p in listed if p.name == "blocks.1.hook_mlp_in")
    walks = []
    monkeypatch.setattr(model, "named_modules", lambda *a, **k: walks.append(a) or iter(()))
    assert [resolve_hooks(model, [p.name])[0] for p in listed] == listed
    assert [p.module_path for p in resolve_hooks(model, raw)] == raw
    seen = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(replace_mlp(model, 1, lambda _x, clean: clean))
        stack.enter_context(replace(model, mlp_in, lambda x: seen.append(x)))
        assert walks == []  # plain names and hook points follow their path
        monkeypatch.undo()
        with torch.no_grad():
            model(**inputs)
    torch.testing.assert_close(seen[0], capture(model, inputs, [mlp_in])[mlp_in.name])
    with pytest.raises(UnknownHookError, match="closest: blocks.1.hook_mlp_out"):
        resolve_hooks(model, ["blocks.1.hook_mlp_ot"])  # an unknown name lists every name for the hint
