"""capture_rows: the rows equal a plain full forward's hidden states (each context run alone,
no padding, output_hidden_states) at the non-special positions, in (context, position) order;
the forward stops after the deepest hook; limit / start cut rows; count_kept counts them."""

import numpy as np
import pytest
import torch

from saelens_lite.lm.capture import Context, capture_rows, count_kept

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the cat sat on the mat", "hi", "a longer context, with some punctuation!"]


def contexts_of(lm) -> list[np.ndarray]:
    """Contexts of different lengths (so the batch is padded), with a mid-text special token."""
    ids = [lm.tokenizer(t)["input_ids"] for t in TEXTS]
    special = lm.tokenizer.eos_token_id if lm.tokenizer.eos_token_id is not None else lm.tokenizer.sep_token_id
    ids[2] = ids[2][:5] + [special] + ids[2][5:]
    return [np.asarray(i, dtype=np.int64) for i in ids]


def special_ids(tok) -> set[int]:
    """The "special" rule written out from the tokenizer's attributes (oracle for lm.tokens)."""
    names = ("bos_token_id", "cls_token_id", "eos_token_id", "pad_token_id", "sep_token_id")
    return {getattr(tok, n) for n in names if getattr(tok, n, None) is not None}


def hidden_rows(lm, contexts, layer: int):
    """Oracle: block ``layer``'s output at the non-special positions, each context alone."""
    special = special_ids(lm.tokenizer)
    rows, ctx, pos = [], [], []
    with torch.no_grad():
        for c, ids in enumerate(contexts):
            hs = lm.model(input_ids=torch.as_tensor(ids)[None], output_hidden_states=True).hidden_states
            for s, t in enumerate(ids.tolist()):
                if t not in special:
                    rows.append(hs[layer + 1][0, s])
                    ctx.append(c)
                    pos.append(s)
    return torch.stack(rows), np.array(ctx), np.array(pos)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
def test_rows_equal_the_hidden_states_of_a_plain_forward(fixture, request):
    lm = request.getfixturevalue(fixture)
    contexts = contexts_of(lm)
    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    batches = list(capture_rows(lm, hooks, contexts, exclude="special", batch_size=2))
    assert len(batches) == 2  # 3 contexts in batches of 2
    for layer, hook in zip((1, 2), hooks):
        want, ctx, pos = hidden_rows(lm, contexts, layer)
        got = torch.cat([b.acts[hook] for b in batches])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(np.concatenate([b.context_n for b in batches]), ctx)
        np.testing.assert_array_equal(np.concatenate([b.position_n for b in batches]), pos)
    ids = np.concatenate([b.token_ids_n for b in batches])
    np.testing.assert_array_equal(ids, [contexts[c][p] for c, p in zip(ctx, pos)])
    assert count_kept(contexts, lm.tokenizer, "special") == len(ids)


def test_the_forward_stops_after_the_deepest_hook(tiny_llama):
    calls = []
    layers = tiny_llama.model.model.layers
    handles = [layers[i].register_forward_hook(lambda *_, i=i: calls.append(i)) for i in range(4)]
    try:
        list(capture_rows(tiny_llama, ["blocks.1.hook_resid_post"], contexts_of(tiny_llama), batch_size=3))
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]  # blocks 2 and 3 never ran


def test_limit_and_start_cut_rows_and_a_batch_with_none_is_not_run(tiny_gpt2):
    lm = tiny_gpt2
    c = contexts_of(lm)
    hook = "blocks.0.hook_mlp_out"
    full = [b for b in capture_rows(lm, [hook], [Context(x, i) for i, x in enumerate(c)], exclude="none")][0]
    cut = [Context(c[0], 7, limit=3), Context(c[1], 8, start=len(c[1])), Context(c[2], 9, start=4)]
    (got,) = capture_rows(lm, [hook], cut, exclude="none")
    np.testing.assert_array_equal(got.context_n, [7] * 3 + [9] * (len(c[2]) - 4))
    np.testing.assert_array_equal(got.position_n, [0, 1, 2] + list(range(4, len(c[2]))))
    want = torch.cat([full.acts[hook][:3], full.acts[hook][full.context_n == 2][4:]])
    torch.testing.assert_close(got.acts[hook], want)
    assert list(capture_rows(lm, [hook], [Context(c[0], limit=0)], exclude="none")) == []


def test_empty_attended_gives_a_context_with_no_kept_row_its_attended_positions(tiny_llama):
    lm = tiny_llama
    bos = lm.tokenizer.bos_token_id
    only_special = np.array([bos, bos], dtype=np.int64)  # every position excluded by the token rule
    c = [contexts_of(lm)[0], only_special]
    hook = "blocks.1.hook_resid_post"
    (skip,) = capture_rows(lm, [hook], c, exclude="special")
    (att,) = capture_rows(lm, [hook], c, exclude="special", empty="attended")
    assert 1 not in skip.context_n  # the rule alone: nothing of context 1
    np.testing.assert_array_equal(att.context_n, list(skip.context_n) + [1, 1])
    np.testing.assert_array_equal(att.position_n[-2:], [0, 1])  # padding is never a row
    with torch.no_grad():
        alone = lm.model(input_ids=torch.as_tensor(only_special)[None], output_hidden_states=True)
    torch.testing.assert_close(att.acts[hook][-2:], alone.hidden_states[2][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(att.acts[hook][:-2], skip.acts[hook])
    with pytest.raises(ValueError, match=r"empty='none': choose one of \['skip', 'attended'\]"):
        next(capture_rows(lm, [hook], c, empty="none"))
