"""Transcoders for several layers from one model pass (issue 27; docs/circuits.md, "Transcoders for
every layer from one pass"; docs/benchmarks.md).

``speed``: for each block set (``--sets 0-3 26-29``), the wall time of one run training the
``blocks.L.hook_mlp_in -> blocks.L.hook_mlp_out`` transcoders of those blocks together, against
one one-pair run per block, on the same streamed tokens, seed and loaded model, in one process
(so the ratio is measured under the same load). Also the model forwards of each (counted by a
forward pre-hook on the model) and the largest weight difference between a pair trained together
and alone (0 up to float rounding: each pair's init is drawn from the seed alone).

``all``: train every block's transcoder in one pass (``--hooks 'blocks.*.hook_mlp_in'
--target-hook 'blocks.*.hook_mlp_out'``), then on held-out contexts (after every context the
training read): per layer the FVU of the MLP output and the latents that never fire, and the
next-token CE loss of the model with every MLP replaced by its transcoder and the error terms
off, against the clean model (also with only the first n MLPs replaced, and with every MLP
output mean-ablated). ``eval`` runs that evaluation on the transcoders of an earlier ``all``.

Usage:
    OMP_NUM_THREADS=2 python scripts/bench_multi_transcoders.py speed --out runs/multi_tc
    OMP_NUM_THREADS=1 python scripts/bench_multi_transcoders.py all --tokens 200000 --init-sample-tokens 16384 --out runs/tc30
    OMP_NUM_THREADS=1 python scripts/bench_multi_transcoders.py eval --transcoders runs/tc30/all --skip-contexts 1664 --ce-prefixes 1 3 10 20
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from saelens_lite.evals.heldout import heldout_contexts, heldout_rows_of
from saelens_lite.evals.metrics import ReconstructionStats
from saelens_lite.lm.load import load_model
from saelens_lite.lm.losses import next_token_ce
from saelens_lite.lm.splice import ablated, splice
from saelens_lite.lm.tokens import excluded_token_ids, keep_mask
from saelens_lite.saes import SAE
from saelens_lite.training import TrainConfig, train
from saelens_lite.training.data import StreamSource

IN, OUT = "blocks.{}.hook_mlp_in", "blocks.{}.hook_mlp_out"


def train_config(args, blocks: str, out: Path) -> TrainConfig:
    """The transcoders of ``blocks`` (a pattern's number slot: '*', '[0-3]' or one number)."""
    slot = blocks if blocks == "*" or blocks.isdigit() else f"[{blocks}]"
    return TrainConfig.from_dict(dict(
        architecture="topk", k=args.k, latents=args.latents, skip=args.skip, hooks=[IN.format(slot)],
        target_hook=OUT.format(slot), batch_size=args.batch_size, tokens=args.tokens, seed=args.seed,
        init_sample_tokens=args.init_sample_tokens, dtype=args.dtype, checkpoint_every=0, log_every=10, progress=False,
        model=args.model, dataset=args.dataset, context_size=args.context_size,
        model_batch_size=args.model_batch_size, buffer_contexts=args.buffer_contexts, out_dir=str(out)))


class ForwardCounter:
    """Counts the forwards of ``model`` (a public forward pre-hook)."""

    def __init__(self, model):
        self.n = 0
        model.register_forward_pre_hook(lambda *_: setattr(self, "n", self.n + 1))


def timed_train(cfg: TrainConfig, lm, counter: ForwardCounter) -> tuple[dict[str, SAE], float, int, int]:
    """({input hook: transcoder}, seconds, model forwards, contexts read) of one streamed run."""
    source = StreamSource(lm, [*cfg.hooks, cfg.sae.target_hook], dataset=cfg.dataset,
                          context_size=cfg.context_size, model_batch_size=cfg.model_batch_size,
                          buffer_contexts=cfg.buffer_contexts)
    before, t0 = counter.n, time.perf_counter()
    out = train(cfg, source)
    saes = out if isinstance(out, dict) else {out.cfg.hook_name: out}
    return saes, time.perf_counter() - t0, counter.n - before, source.contexts_consumed


def speed(args, lm) -> dict:
    counter = ForwardCounter(lm.model)
    results = {}
    for blocks in args.sets:
        lo, hi = (int(v) for v in blocks.split("-"))
        together, t_one, f_one, _ = timed_train(train_config(args, blocks, Path(args.out) / f"one_{blocks}"), lm, counter)
        t_sep, f_sep, diff = 0.0, 0, 0.0
        for layer in range(lo, hi + 1):
            alone, t, f, _ = timed_train(train_config(args, str(layer), Path(args.out) / f"sep_{layer}"), lm, counter)
            t_sep, f_sep = t_sep + t, f_sep + f
            h = IN.format(layer)
            diff = max(diff, max(float((alone[h].state_dict()[k] - w).abs().max())
                                 for k, w in together[h].state_dict().items()))
        results[blocks] = {"one_pass_s": t_one, "separate_s": t_sep, "ratio": t_sep / t_one,
                           "forwards_one_pass": f_one, "forwards_separate": f_sep, "max_weight_diff": diff}
        print(f"blocks {blocks}: one pass {t_one:.1f} s ({f_one} forwards), {hi - lo + 1} separate runs "
              f"{t_sep:.1f} s ({f_sep} forwards), ratio {t_sep / t_one:.2f}, max |dW| {diff:.2e}", flush=True)
    return results


@torch.no_grad()
def mean_ce(lm, contexts, batch: int, excluded: set[int]) -> float:
    """Next-token CE (nats, ``lm.losses``) over positions t < S-1 whose input token is kept,
    float64 (as ``evals.downstream``)."""
    total, n = 0.0, 0
    for i in range(0, len(contexts), batch):
        ids_BS = torch.as_tensor(np.stack(contexts[i:i + batch]), dtype=torch.long)
        loss = next_token_ce(lm.model(input_ids=ids_BS).logits, ids_BS, torch.float64)
        mask = keep_mask(ids_BS, excluded)[:, :-1]
        total, n = total + float(loss[mask].sum()), n + int(mask.sum())
    return total / n


def evaluate_all(args, lm, saes: dict[str, SAE], skip_contexts: int) -> dict:
    """Per-layer held-out FVU / dead latents and the CE of the fully replaced model."""
    ev = heldout_contexts(lm.tokenizer, args.dataset, args.context_size, args.eval_contexts, skip=skip_contexts)
    hooks = [h for x in saes for h in (x, saes[x].cfg.target_hook)]
    rows = heldout_rows_of(lm, hooks, ev.contexts, progress=False)
    layers = {}
    for x, sae in saes.items():
        stats = ReconstructionStats(sae.cfg.d_in, sae.cfg.d_sae)
        for i in range(0, len(rows[x]), 4096):
            xb = rows[x][i:i + 4096]
            with torch.no_grad():
                acts = sae.encode(xb)
                stats.update(rows[sae.cfg.target_hook][i:i + 4096], sae(xb), acts)
        r = stats.result()
        layers[x] = {"fvu": r["fvu"], "fvu_typical": r.get("fvu_typical"), "l0": r["l0"],
                     "never_fired": int((stats.fire_count_F == 0).sum()), "d_sae": sae.cfg.d_sae}
    where = (f"contexts {ev.first}-{ev.first + len(ev.contexts) - 1} of {args.dataset} (held out: after the "
             f"{skip_contexts} contexts training read)")
    return {"eval": where, "eval_tokens": len(rows[hooks[0]]), "layers": layers,
            **replacement_ce(args, lm, saes, ev.contexts, rows)}


def replacement_ce(args, lm, saes: dict[str, SAE], contexts, rows) -> dict:
    """CE of the clean model; of the model with every MLP replaced by its transcoder (no error
    terms); with only the first n MLPs replaced (``--ce-prefixes``); and, as a reference, with
    every MLP output set to its mean over the evaluation rows (mean ablation)."""
    excluded = excluded_token_ids(lm.tokenizer, "bos")
    out = {"ce_clean": mean_ce(lm, contexts, 8, excluded)}
    with splice(lm.model, saes, excluded=excluded, keep_error=False):
        out["ce_replaced"] = mean_ce(lm, contexts, 8, excluded)
    inputs = list(saes)
    for n in args.ce_prefixes:
        with splice(lm.model, {h: saes[h] for h in inputs[:n]}, excluded=excluded, keep_error=False):
            out[f"ce_first_{n}_replaced"] = mean_ce(lm, contexts, 8, excluded)
    with ExitStack() as stack:
        for sae in saes.values():
            y = sae.cfg.target_hook
            stack.enter_context(ablated(lm.model, y, rows[y].mean(0), excluded=excluded))
        out["ce_mean_ablated"] = mean_ce(lm, contexts, 8, excluded)
    return out


def report(res: dict, n: int) -> None:
    train = "train_fvu" in next(iter(res["layers"].values()))
    print(f"{res['eval']}, {res['eval_tokens']} tokens")
    print("| layer | FVU (held-out) | FVU typical | never fired (held-out) |"
          + (" dead at end (train) | FVU (train, last step) |" if train else ""))
    print("|---|---|---|---|" + ("---|---|" if train else ""))
    for h, r in res["layers"].items():
        print(f"| {h.split('.')[1]} | {r['fvu']:.3f} | {r['fvu_typical']:.3f} | {r['never_fired']} / {r['d_sae']} |"
              + (f" {r['train_dead_fraction']:.3f} | {r['train_fvu']:.3f} |" if train else ""))
    print(", ".join(f"{k} {v:.4f}" for k, v in res.items() if k.startswith("ce_")) + f" ({n} transcoders)")


def with_train_metrics(res: dict, run_dir: Path) -> dict:
    """Each layer's last training record (FVU, dead fraction) from ``run_dir/metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        metrics = [json.loads(line) for line in path.read_text().splitlines()]
        last = max(m["step"] for m in metrics)
        for r in metrics:
            if r["step"] == last and r["hook"] in res["layers"]:
                res["layers"][r["hook"]] |= {"train_fvu": r["fvu"], "train_dead_fraction": r["dead_fraction"]}
    return res


def run_all(args, lm) -> dict:
    out = Path(args.out) / "all"
    counter = ForwardCounter(lm.model)
    saes, seconds, forwards, read = timed_train(train_config(args, "*", out), lm, counter)
    print(f"trained {len(saes)} transcoders in {seconds:.0f} s ({forwards} forwards)", flush=True)
    # every context the run read (the init sample's are its first ones) comes before these
    res = with_train_metrics(evaluate_all(args, lm, saes, skip_contexts=read), out)
    res |= {"train_seconds": seconds, "forwards": forwards, "tokens": args.tokens, "contexts_read": read}
    report(res, len(saes))
    return res


def run_eval(args, lm) -> dict:
    """The evaluation of ``all`` on transcoders saved by an earlier run (``--transcoders``)."""
    root = Path(args.transcoders)
    saes = {sae.cfg.hook_name: sae for sae in (SAE.load(p.parent) for p in root.glob("*/cfg.json"))}
    saes = dict(sorted(saes.items(), key=lambda kv: int(kv[0].split(".")[1])))
    res = with_train_metrics(evaluate_all(args, lm, saes, skip_contexts=args.skip_contexts), root)
    report(res, len(saes))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["speed", "all", "eval"])
    ap.add_argument("--transcoders", help="eval: the run folder of an earlier `all`")
    ap.add_argument("--skip-contexts", type=int, default=0, help="eval: contexts the training read")
    ap.add_argument("--ce-prefixes", type=int, nargs="*", default=[], help="also CE with the first n MLPs replaced")
    ap.add_argument("--out", default="runs/multi_tc")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="builtin:pydocs")
    ap.add_argument("--sets", nargs="+", default=["0-3", "26-29"], help="speed: block ranges LO-HI")
    ap.add_argument("--tokens", type=int, default=16_384)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--latents", type=int, default=2304)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--skip", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="the step's autocast")
    ap.add_argument("--init-sample-tokens", type=int, default=4096)
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--model-batch-size", type=int, default=16)
    ap.add_argument("--buffer-contexts", type=int, default=64,
                    help="contexts shuffled together (64: 60 hooks x 8k rows x 576 floats = 1.1 GB)")
    ap.add_argument("--eval-contexts", type=int, default=64)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    lm = load_model(args.model)
    print(f"{args.model}, torch threads {torch.get_num_threads()}, {args.tokens} tokens, batch {args.batch_size}, "
          f"d_sae {args.latents}, k {args.k}, dtype {args.dtype}", flush=True)
    res = {"speed": speed, "all": run_all, "eval": run_eval}[args.mode](args, lm)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"results_{args.mode}.json").write_text(json.dumps({"args": vars(args), **res}, indent=1))


if __name__ == "__main__":
    main()
