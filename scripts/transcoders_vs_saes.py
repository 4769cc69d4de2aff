"""Transcoders against SAEs at one layer, equal L0 and token budget (docs/transcoders.md).

1. harvest ``blocks.L.hook_mlp_in``, ``hook_mlp_out`` and ``hook_resid_post`` in one forward,
2. train seven TopK coders (same k, width, batch, tokens, seed): an SAE on ``hook_mlp_out``, an
   SAE on ``hook_resid_post``, a transcoder ``mlp_in -> mlp_out`` without and with ``--skip``,
   both again with a random decoder (``decoder_init=random``, the old init), and the plain one
   with that and its encoder bias at zero too (``b_enc_init=zeros``, the older init),
3. evaluate each on held-out contexts (after the cache's): FVU of what it reconstructs and the
   spliced model's CE / KL (a transcoder replaces the MLP), and write ``OUT/table.md`` and
   ``OUT/results.json``.

Every stage reuses its output when re-run. Usage:
    python scripts/transcoders_vs_saes.py --out runs/tc [--layer 9] [--tokens 100000]
           [--train-tokens 1000000]   (tests run it on tiny-llama)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.evals import EvalConfig, evaluate
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE
from saelens_lite.training import TrainConfig, train


def runs(layer: int) -> dict[str, dict]:
    """name -> TrainConfig fields that differ between the coders."""
    mlp_in, mlp_out, resid = (f"blocks.{layer}.hook_{s}" for s in ("mlp_in", "mlp_out", "resid_post"))
    return {
        "sae_mlp_out": {"hooks": [mlp_out]},
        "sae_resid_post": {"hooks": [resid]},
        "transcoder": {"hooks": [mlp_in], "target_hook": mlp_out},
        "transcoder_skip": {"hooks": [mlp_in], "target_hook": mlp_out, "skip": True},
        # the decoder init before decoder_init existed: random unit rows, W_enc = W_dec^T
        "transcoder_random_decoder": {"hooks": [mlp_in], "target_hook": mlp_out,
                                      "sae_options": {"decoder_init": "random"}},
        "transcoder_skip_random_decoder": {"hooks": [mlp_in], "target_hook": mlp_out, "skip": True,
                                           "sae_options": {"decoder_init": "random"}},
        # the encoder init before b_enc_init existed too: b_enc = 0, pre-activations not centred
        "transcoder_uncentred": {"hooks": [mlp_in], "target_hook": mlp_out,
                                 "sae_options": {"b_enc_init": "zeros", "decoder_init": "random"}},
    }


KEYS = ("l0", "fvu", "fvu_typical", "in_sample_fvu", "ce_loss_clean", "ce_loss_sae", "ce_loss_zero",
        "ce_loss_recovered", "ce_loss_recovered_mean", "kl_div", "dead_fraction", "downstream_tokens", "n_tokens",
        "d_sae")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/tc")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens to harvest")
    ap.add_argument("--train-tokens", type=int, default=1_000_000)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--heldout-tokens", type=int, default=16_384)
    ap.add_argument("--ce-contexts", type=int, default=16)
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--only", nargs="+", default=None, help="train / evaluate only these coders (e.g. to run "
                    "them in several processes), then write the table of every finished one")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    out = Path(args.out)
    lm = load_model(args.model)
    hooks = [f"blocks.{args.layer}.hook_{s}" for s in ("mlp_in", "mlp_out", "resid_post")]
    t0 = time.perf_counter()
    cache = harvest(HarvestConfig(model=args.model, hooks=hooks, tokens=args.tokens, context_size=args.context_size,
                                  batch_size=16, device="cpu"), out / "activations", model=lm)
    print(f"harvest: {time.perf_counter() - t0:.0f} s", flush=True)
    for name, fields in runs(args.layer).items():
        run = out / name
        if (run / "result.json").exists() or (args.only and name not in args.only):
            continue
        sae_dir = run / fields["hooks"][0]
        t = time.perf_counter()
        if (sae_dir / "cfg.json").exists():
            sae = SAE.load(sae_dir)
        else:
            cfg = TrainConfig.from_dict(dict(  # fields: the flat spelling (training.sae_flags)
                architecture="topk", expansion=args.expansion, k=args.k, tokens=args.train_tokens,
                batch_size=args.batch_size, warmup_steps=20, out_dir=str(run), seed=0,
                checkpoint_every=500_000, resume=(run / "checkpoints").exists(), device="cpu",
                log_every=20, progress=False, **fields))
            sae = train(cfg, cache)
        t_train = time.perf_counter() - t
        m = evaluate(sae, cache, EvalConfig(heldout_tokens=args.heldout_tokens,
                                            ce_contexts=args.ce_contexts, out_dir=run / "eval",
                                            progress=False),
                      model=lm)
        result = {k: m.get(k) for k in KEYS} | {
            "what": m.get("transcoder") or f"SAE on {m['hook']}", "train_s": round(t_train),
            "reconstruction_source": m["reconstruction_source"], "downstream_source": m.get("downstream_source")}
        (run / "result.json").write_text(json.dumps(result, indent=1))
        print(name, {k: result[k] for k in ("fvu", "ce_loss_sae", "ce_loss_recovered", "kl_div")}, flush=True)
    results = {name: json.loads((out / name / "result.json").read_text()) for name in runs(args.layer)
               if (out / name / "result.json").exists()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table(results, args))
    print(table(results, args))


def _f(v, fmt="{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def table(results: dict, args) -> str:
    rows = ["| coder | reconstructs | L0 | FVU held-out | FVU typical | FVU in-sample | CE spliced | "
            "CE recovered (zero) | CE recovered (mean) | KL | dead (held-out) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['what']} | {_f(r['l0'], '{:.1f}')} | {_f(r['fvu'])} | {_f(r['fvu_typical'])} | "
                    f"{_f(r['in_sample_fvu'])} | {_f(r['ce_loss_sae'])} | {_f(r['ce_loss_recovered'])} | "
                    f"{_f(r['ce_loss_recovered_mean'])} | {_f(r['kl_div'], '{:.4f}')} | "
                    f"{_f(r.get('dead_fraction'), '{:.1%}')} |")
    any_r = next(iter(results.values()))
    return ("\n".join(rows) + f"\n\nTopK, k={args.k}, d_sae={any_r['d_sae']}, {args.train_tokens:,} training tokens "
            f"(batch {args.batch_size}) from a {args.tokens:,}-token cache; FVU over {any_r['n_tokens']:,} "
            f"held-out tokens ({any_r['reconstruction_source']}); CE / KL over {any_r['downstream_tokens']:,} "
            f"tokens of {any_r['downstream_source']}; CE clean {any_r['ce_loss_clean']:.3f}.\n")


if __name__ == "__main__":
    main()
