"""A synthetic SAE + cache whose features mean known things, and the subprocess of the kill -9
resume test: ``python _explain_worker.py SAE_DIR CACHE_DIR OUT_DIR MODE`` (MODE ``full`` or
``crash``: the same run, slowed down so the test can kill it after its first batch).

The cache holds byte-level tiny-llama tokens of short topical texts (one topic per packed
context) and activations built so that a ReLU SAE with ``W_enc = I`` reads:
feature 0 = the token "@" (a trigger token), features 1-4 = "the text is about TOPICS[i-1]"
(every non-space token of that topic's contexts), features 5-7 never fire.
"""

import sys
import time

import numpy as np
import torch

HOOK = "blocks.1.hook_resid_post"
D, F = 64, 8
TOPICS = {
    "cats": ["the cat sat on the mat and purred", "my kitten chased a ball of yarn",
             "our cats sleep all day by the window", "the kitten drank milk and meowed",
             "a tabby cat climbed the tree to hunt birds", "she fed her cat tuna and cat treats"],
    "finance": ["stock prices fell as the market closed", "the bank raised interest rates again",
                "investors sold shares after weak earnings", "the dollar rose against the euro",
                "bond yields climbed while stocks dropped", "the fund lost money on oil futures"],
    "weather": ["heavy rain and strong wind are expected tonight", "the forecast says snow tomorrow",
                "a storm brought thunder and lightning", "sunny skies and warm temperatures today",
                "fog covered the valley this morning", "the hurricane made landfall with high winds"],
    "sports": ["the striker scored a goal in the final minute", "the team won the championship game",
               "she ran the marathon in record time", "the pitcher threw a fastball for a strike",
               "fans cheered as the players entered the stadium", "the coach called a timeout"],
}
ORACLE = {1: "cats, kittens and pet animals", 2: "stock markets, banks, money and finance",
          3: "weather: rain, snow, storms and wind", 4: "sports: teams, games, players and goals"}
EMAILS = ["write to bob@example.org", "mail anna@home.net today", "ping me at x@y.com"]


def build(root, n_contexts: int = 24, context_size: int = 96, seed: int = 0):
    """Write ``root/cache`` and ``root/sae``; returns their paths."""
    from saelens_lite.cache import CacheWriter
    from saelens_lite.lm.load import tiny_tokenizer
    from saelens_lite.saes import SAE, SAEConfig

    rng = np.random.default_rng(seed)
    tok = tiny_tokenizer("llama")
    at = tok("@", add_special_tokens=False).input_ids[0]
    space = tok(" ", add_special_tokens=False).input_ids[0]
    cache_dir, sae_dir = f"{root}/cache", f"{root}/sae"
    writer = CacheWriter.open(cache_dir, meta={"model": "tiny-llama"}, hooks={HOOK: D},
                              dtype="float32", shard_tokens=1000)
    ctx = 0
    for _ in range(n_contexts):
        for t, sentences in enumerate(TOPICS.values()):
            parts = []
            while len(" ".join(parts)) < context_size + 20:
                parts.append(sentences[rng.integers(len(sentences))])
                if rng.random() < 0.3:
                    parts.append(EMAILS[rng.integers(len(EMAILS))])
            ids = np.array(tok(". ".join(parts), add_special_tokens=False).input_ids[:context_size])
            x = 0.05 * rng.standard_normal((len(ids), D)).astype(np.float32)
            x[ids == at, 0] += 3.0
            x[ids != space, 1 + t] += rng.uniform(0.5, 2.5, size=int((ids != space).sum()))
            writer.append({HOOK: x}, ids, np.full(len(ids), ctx), np.arange(len(ids)))
            ctx += 1
    writer.finalize()
    sae = SAE.from_config(SAEConfig.build(architecture="relu", d_in=D, d_sae=F, hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:F, :F] = torch.eye(F)
        sae.W_dec.copy_(torch.eye(F, D))
        sae.b_enc.fill_(-0.3)  # the noise (std 0.05) never reaches it
        sae.b_dec.zero_()
    sae.save(sae_dir)
    return sae_dir, cache_dir


class SlowTemplate:
    """The template explainer, slowed so a batch lands well before the run ends."""

    def __init__(self):
        from saelens_lite.explain import TemplateExplainer

        self.inner, self.spec, self.chat = TemplateExplainer(), "template", None

    def explain(self, ex):
        time.sleep(0.4)
        return self.inner.explain(ex)


def run(sae_dir, cache_dir, out_dir, mode: str) -> None:
    from saelens_lite.explain import ExplainConfig, TemplateExplainer, explain

    cfg = ExplainConfig(batch_features=2, n_explain=4, n_heldout=4, n_nonactivating=4, n_top=8,
                        n_quantiles=2, n_per_quantile=2, window_before=16, window_after=4, n_logits=3)
    explainer = SlowTemplate() if mode == "crash" else TemplateExplainer()
    explain(sae_dir, cache_dir, out_dir, explainer=explainer, scorers="embedding", config=cfg,
            progress=False)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(*sys.argv[1:5])
