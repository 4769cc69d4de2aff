"""Cost of interventions against the plain model, in one process on one model.

Prints
  1. generation time per token (greedy, KV cache, batch of one prompt) of the plain model, of the
     model with the SAE spliced (error term kept, no edit), and with the SAE spliced and one
     ``add_direction`` edit, and the ratio edited/plain (target <= 1.3 on CPU);
  2. attribution (``interventions.attribute``: one forward + one backward through the spliced
     model, every (position, feature) and error node) of one prompt of ``--prompt-tokens``
     tokens, against one forward + backward of the plain model to the same logit (gradient with
     respect to the hook's activation only, and ``.backward()`` with weight gradients).
Repeats are interleaved (plain, spliced, edited, plain, ...) and the median is reported, so
load from other processes hits every variant alike.

``--sae`` loads a trained SAE folder; without it a random-init TopK SAE of ``--expansion`` x
d_model latents and k=32 is spliced (the cost does not depend on the weights).

Usage: python scripts/bench_interventions.py [--model smollm2-135m] [--hook blocks.9.hook_resid_post]
       [--sae PATH] [--expansion 8] [--new-tokens 64] [--prompt-tokens 128] [--repeats 5]
       [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from saelens_lite.corpus.text import iter_documents
from saelens_lite.interventions import add_direction, attribute, generate
from saelens_lite.lm.hooks import replace
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE, SAEConfig


def _sae(args, lm) -> SAE:
    if args.sae:
        return SAE.load(args.sae)
    torch.manual_seed(0)
    d = lm.model.config.hidden_size
    return SAE.from_config(SAEConfig(architecture="topk", d_in=d, d_sae=args.expansion * d, k=32,
                                     hook_name=args.hook)).eval()


def _prompt(lm, n_tokens: int) -> str:
    """Text of about ``n_tokens`` tokens from builtin:pydocs."""
    text = "".join(itertools.islice(iter_documents("builtin:pydocs"), 20))
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return lm.tokenizer.decode(ids)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_generation(lm, sae, args) -> dict[str, float]:
    prompt = "The weather today is"
    edit = [add_direction(7, 4.0)]
    variants = {
        "plain": lambda: generate(lm, prompt, max_new_tokens=args.new_tokens, baseline=False),
        "spliced": lambda: generate(lm, prompt, sae, max_new_tokens=args.new_tokens, baseline=False),
        "edited": lambda: generate(lm, prompt, sae, edit, max_new_tokens=args.new_tokens,
                                   baseline=False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            out = {}
            dt = _timed(lambda fn=fn, out=out: out.setdefault("r", fn()))
            n = len(out["r"].continuations[0].edited_ids)
            times[name].append(dt / n)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_attribution(lm, sae, args) -> tuple[dict[str, float], int]:
    prompt = _prompt(lm, args.prompt_tokens)
    ids = lm.tokenizer([prompt], return_tensors="pt")["input_ids"]
    target = int(ids[0, -1])

    def grad_to_hook():
        leaf = {}

        def fn(x):
            leaf["x"] = x.detach().requires_grad_()
            return leaf["x"]

        with replace(lm.model, args.hook, fn):
            m = lm.model(input_ids=ids).logits[0, -1, target]
            torch.autograd.grad(m, [leaf["x"]])

    def full_backward():
        lm.model(input_ids=ids).logits[0, -1, target].backward()
        lm.model.zero_grad(set_to_none=True)

    variants = {
        "fwd+bwd (grad to the hook)": grad_to_hook,
        "fwd+bwd (weight grads)": full_backward,
        "attribute": lambda: attribute(lm, prompt, sae, target),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.enable_grad():
        for fn in variants.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in variants.items():
                times[name].append(_timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}, ids.shape[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hook", default="blocks.9.hook_resid_post")
    ap.add_argument("--sae", default=None, help="trained SAE folder (default: random TopK)")
    ap.add_argument("--expansion", type=int, default=8, help="random SAE width / d_model")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    sae = _sae(args, lm)
    print(f"model={args.model} hook={args.hook} sae d_sae={sae.cfg.d_sae} k={sae.cfg.k} "
          f"threads={torch.get_num_threads()} repeats={args.repeats} (median)")
    gen = bench_generation(lm, sae, args)
    for name, t in gen.items():
        print(f"generation {name:8s} {1e3 * t:8.2f} ms/token")
    print(f"ratio spliced/plain = {gen['spliced'] / gen['plain']:.3f}, "
          f"edited/plain = {gen['edited'] / gen['plain']:.3f}  (target <= 1.3)")
    att, n = bench_attribution(lm, sae, args)
    for name, t in att.items():
        print(f"{name:28s} {1e3 * t:8.1f} ms  ({n}-token prompt)")
    for base in ("fwd+bwd (grad to the hook)", "fwd+bwd (weight grads)"):
        print(f"ratio attribute / {base} = {att['attribute'] / att[base]:.2f}")


if __name__ == "__main__":
    main()
