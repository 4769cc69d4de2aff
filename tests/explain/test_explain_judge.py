"""The local judge's fast P(yes) (saelens_lite/explain/chat.py: the LM head on the last position
only, prompts sharing a token-id prefix scored against one cached prefix) gives the plain padded
forward's answers: on the tiny random llama with prefixes of different lengths, a group of one,
suffixes of different lengths and groups spanning several batches; through the detection and
fuzzing scorers (the same AUROC); and on the real SmolLM2 judge with real judge prompts (slow).
The synthetic SAE and cache: tests/explain/_explain_worker.py."""

import _explain_worker as synth
import pytest

from saelens_lite.cache import ActivationCache
from saelens_lite.explain import ExampleSource, ExplainConfig, TemplateExplainer
from saelens_lite.explain.chat import HFChat, prefix_groups
from saelens_lite.explain.scorers import DetectionScorer, FuzzingScorer
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = ExplainConfig(n_explain=4, n_heldout=6, n_nonactivating=6, batch_features=3)


class Plain:
    """A judge answering with the reference computation (``p_yes(..., fast=False)``)."""

    def __init__(self, chat):
        self.chat = chat

    def p_yes(self, batch):
        return self.chat.p_yes(batch, fast=False)


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def tiny_judge(lm):
    """HFChat around the byte-level tiny llama, which has no single-token "yes": it judges with
    the bytes "y" / "n" instead (the computation is the same)."""
    chat = HFChat("tiny-llama", lm=lm, batch_size=3, max_new_tokens=4, yes_words=("y",), no_words=("n",))
    tok = lm.tokenizer
    assert chat.yes_ids == tok("y", add_special_tokens=False).input_ids
    assert chat.no_ids == tok("n", add_special_tokens=False).input_ids
    assert not getattr(tok, "chat_template", None)  # _ids' plain-transcript fallback
    return chat


@pytest.fixture(scope="module")
def source(tmp_path_factory, lm):
    sae_dir, cache_dir = synth.build(tmp_path_factory.mktemp("judge"))
    src = ExampleSource(SAE.load(sae_dir).eval(), ActivationCache(cache_dir), lm, CFG, progress=False)
    yield src
    src.close()


def test_prefix_groups_split_on_token_ids_and_keep_a_suffix():
    a, b = list(range(100)), list(range(500, 560))
    seqs = [a + [1], a + [2, 3], a + [4] * 7,  # share 100 ids
            [9, 9, 9],  # shares nothing: alone
            b + [1], b + [1, 2], b,  # b is a prefix of its mates: P stops one short of it
            [7] * 20]
    assert prefix_groups(seqs) == [(0, 3, 100), (3, 4, 0), (4, 7, 59), (7, 8, 0)]
    assert prefix_groups([a + [1], a + [2]], overhead=200) == [(0, 1, 0), (1, 2, 0)]  # not worth it
    assert prefix_groups([]) == []
    assert prefix_groups([a, a, a]) == [(0, 3, 99)]  # identical prompts still keep one token each


def test_fast_p_yes_equals_the_plain_forward(tiny_judge):
    heads = ["Describe: " + "alpha " * 40, "Q: " + "beta gamma " * 70, "Zeta " * 15]
    tails = ["a", "bb bb", "the cat sat on the mat, twice " * 3, "x y z " * 9, "ok?"]
    prompts = [[{"role": "user", "content": h + t}] for h in heads for t in tails]
    prompts.insert(5, [{"role": "user", "content": "A lone prompt that shares nothing"}])
    seqs = [tiny_judge._ids(m) for m in prompts]
    runs = prefix_groups(seqs)
    assert [b - a for a, b, P in runs if P] == [5, 5, 5] and len({P for *_, P in runs if P}) == 3
    assert (5, 6, 0) in runs
    plain = tiny_judge.p_yes(prompts, fast=False)
    fast = tiny_judge.p_yes(prompts)
    assert fast == pytest.approx(plain, abs=1e-5)
    assert tiny_judge.p_yes(prompts) == fast  # the cached prefix is not changed by its use
    assert tiny_judge.p_yes(prompts[::-1])[::-1] == pytest.approx(plain, abs=1e-5)
    assert len(set(round(p, 4) for p in plain)) > 5  # the answers differ between prompts


def test_a_model_whose_cache_cannot_be_reused_takes_the_plain_path(lm, monkeypatch):
    """A model that returns a cache other than a plain DynamicCache (here a subclass, as a
    sliding-window or recurrent cache is) is scored by the plain path, and stays on it."""
    from transformers.cache_utils import DynamicCache

    class OtherCache(DynamicCache):
        pass

    judge = HFChat("tiny-llama", lm=lm, batch_size=3, max_new_tokens=4, yes_words=("y",), no_words=("n",))
    prompts = [[{"role": "user", "content": "Describe: " + "alpha " * 40 + t}] for t in "abcdef"]
    plain = judge.p_yes(prompts, fast=False)
    forward, cached_calls = lm.model.forward, []

    def other_cache_forward(*args, **kwargs):
        cached_calls.append(bool(kwargs.get("use_cache")))
        out = forward(*args, **kwargs)
        for key in ("cache", "past_key_values"):
            if out.get(key) is not None:
                out[key].__class__ = OtherCache
        return out

    monkeypatch.setattr(lm.model, "forward", other_cache_forward)  # this instance, this test
    assert judge.p_yes(prompts) == pytest.approx(plain, abs=1e-5)
    assert any(cached_calls)  # the prefix path was tried once ...
    cached_calls.clear()
    assert judge.p_yes(prompts) == pytest.approx(plain, abs=1e-5)
    assert cached_calls and not any(cached_calls)  # ... and not again


@pytest.mark.parametrize("scorer_cls", [DetectionScorer, FuzzingScorer])
def test_judge_scores_are_unchanged(tiny_judge, source, scorer_cls):
    items = [([synth.ORACLE[f], TemplateExplainer().explain(source.examples(f))], source.examples(f))
             for f in (1, 2, 3)]
    fast = scorer_cls(tiny_judge).score_many(items)
    plain = scorer_cls(Plain(tiny_judge)).score_many(items)
    assert fast == plain


@pytest.mark.slow
def test_smollm2_judge_fast_equals_plain(source):
    chat = HFChat("smollm2-135m")
    assert chat._cache_kw and chat._keeps_logits
    items = [([synth.ORACLE[1], synth.ORACLE[2]], source.examples(1))]  # two explanations, one feature
    for scorer_cls in (DetectionScorer, FuzzingScorer):
        fast = scorer_cls(chat).score_many(items)
        plain = scorer_cls(Plain(chat)).score_many(items)
        assert fast == plain
    from saelens_lite.explain.prompts import DETECTION_USER, judge_messages

    prompts = [judge_messages(DETECTION_USER, e, c.text) for e in (synth.ORACLE[1], "finance")
               for c in source.examples(1).heldout + source.examples(2).nonactivating]
    assert len(prefix_groups([chat._ids(m) for m in prompts])) == 2
    assert chat.p_yes(prompts) == pytest.approx(chat.p_yes(prompts, fast=False), abs=1e-4)
