"""Held-out CE gap, FVU and L0 of SAEs before and after end-to-end fine-tuning (docs/finetune.md).

The contexts are those `saelens-lite eval` / `saelens_lite.evals.evaluate` use for an SAE trained
on the cache: the corpus's contexts after the cache's last one (held out: never harvested, so
never trained or fine-tuned on when the fine-tune ran with --activations CACHE). The held-out
activation rows are captured once and shared by every SAE; the spliced-model losses are
`evals.downstream.downstream_by_context` on the first --ce-contexts of them (evaluate's defaults:
16,384 held-out tokens, 16 CE contexts), one pass giving both the token-weighted means and each
context's sums. The CE gap's standard error treats the contexts as the independent units:
SE = sd_c(gap_c) / sqrt(C) over the C contexts' own gaps (each context's tokens weighted equally
within it; `evals.downstream.ce_gap_se`), a paired estimate, since both losses are on the same
tokens.

Usage: python scripts/finetune_gap.py --cache DEMO/activations --hook blocks.9.hook_resid_post \
           --sae before=DEMO/sae/blocks.9.hook_resid_post --sae kl_5pct=RUN/checkpoints/step_000000049.pt \
           [--out gap.json]
An --sae path is an SAE folder or a fine-tune checkpoint (training.finetune.sae_from_checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from saelens_lite.cache import ActivationCache
from saelens_lite.evals import reconstruction_stats
from saelens_lite.evals.downstream import ce_gap_se, downstream_by_context
from saelens_lite.evals.heldout import contexts_for_tokens, heldout_contexts, heldout_rows_of
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE
from saelens_lite.training.finetune import sae_from_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="the activation cache the SAE was trained on")
    ap.add_argument("--hook", required=True)
    ap.add_argument("--sae", action="append", required=True, metavar="LABEL=PATH")
    ap.add_argument("--heldout-tokens", type=int, default=16_384)
    ap.add_argument("--ce-contexts", type=int, default=16)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cache = ActivationCache(args.cache)
    meta = cache.meta
    lm = load_model(meta["model"])
    S = meta["context_size"]
    skip = int(cache.manifest["last_committed"][0]) + 1
    n_ctx = max(args.ce_contexts, contexts_for_tokens(args.heldout_tokens, S))
    ctx = heldout_contexts(lm.tokenizer, meta["corpus"], S, n_ctx, skip=skip)
    rows = heldout_rows_of(lm, [args.hook], ctx.contexts, n_tokens=args.heldout_tokens, progress=False)[args.hook]
    out = []
    for spec in args.sae:
        label, _, path = spec.partition("=")
        t = time.perf_counter()
        sae = sae_from_checkpoint(path) if path.endswith(".pt") else SAE.load(path)
        sae.eval()
        rec = reconstruction_stats(sae, rows, progress=False).result()
        ds, per_context = downstream_by_context(sae, lm, args.hook, ctx.contexts[: args.ce_contexts], progress=False)
        row = {"label": label, "path": path, "ce_clean": ds["ce_loss_clean"], "ce_sae": ds["ce_loss_sae"],
               "ce_gap": ds["ce_loss_sae"] - ds["ce_loss_clean"],
               "ce_gap_se_over_contexts": ce_gap_se(per_context), "ce_contexts": len(per_context["n_ce"]),
               "ce_zero": ds["ce_loss_zero"],
               "ce_loss_recovered": ds["ce_loss_recovered"], "kl_div": ds["kl_div"], "fvu": rec["fvu"],
               "fvu_typical": rec["fvu_typical"], "l0": rec["l0"], "heldout_rows": rec["n_tokens"],
               "ce_tokens": ds["downstream_tokens"], "source": ctx.describe(args.ce_contexts), "split": ctx.split}
        out.append(row)
        print(json.dumps(row), f"({time.perf_counter() - t:.0f} s)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
