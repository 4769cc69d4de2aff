"""Quality of our TopK SAE against SAELens's and sparsify's, at an equal token budget.

    .venv/bin/python scripts/quality_vs_peers.py [--cache runs/quality_vs_peers/cache]
        [--hook blocks.9.hook_resid_post] [--tokens 1000000] [--expansion 8] [--k 32]

One activation cache (harvested from SmolLM2-135M when --cache is absent) is split into a
training part and a held-out tail (--eval-tokens rows, later contexts). Every SAE sees the
same training rows in the same order (one permutation per pass, written to order.npy), the
same batch size, width F = expansion * D and k. Everything else is each library's default:

* ours     -- saelens_lite.training.train(TrainConfig(...)) defaults: Adam, lr 2e-4/sqrt(F/2^14)
              times the short-run factor (4x up to 1,000 steps; training.config.default_lr),
              warm-up + linear decay, inputs scaled to E||x|| = sqrt(D), geometric-median b_dec,
              AuxK, training rows above 5x the median norm clipped to it (outlier_norm_ratio).
* sparsify -- the body of sparsify.Trainer.fit for loss_fn="fvu" (its Trainer needs a model and
              token dataset): SparseCoder(d_in, SparseCoderConfig(num_latents=F, k=k)) with its
              init, b_dec = mean of the first batch, loss = FVU, SignSGD in a ScheduleFreeWrapper
              (momentum 0.95) at lr 5e-3/sqrt(F/2^14), decoder kept unit-norm, auxk_alpha=0;
              the schedule-free averaged weights (optimizer.eval()) are the ones saved.
* SAELens  -- sae_lens.SAETrainer (its own training loop) on TopKTrainingSAE defaults:
              decoder_init_norm 0.1, rescale_acts_by_decoder_norm, AuxK coefficient 1, no input
              normalisation, b_dec = 0; Adam lr 3e-4 constant, betas (0.9, 0.999).

The peers run in a subprocess under the peers' interpreter (they are not in our venv); they read
the cache's .npy shards directly and save with their own savers. All SAEs are then loaded with
saelens_lite.saes.interop.load_any and scored by the same code on the held-out rows: FVU
(sum ||x - x_hat||^2 / sum ||x - mean x||^2), L0 (mean active latents per token), dead fraction
(latents that never fire on the held-out rows) and training wall time (excluding imports and
data loading). Results go to OUT/results.json and, with --md, a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("quality_vs_peers")


# ------------------------------------------------------------------ worker (peers' interpreter)
def _load_rows(cache: pathlib.Path, hook: str) -> np.ndarray:
    """The cache's (N, D) activations of `hook` as one float32 array (layout of cache.py)."""
    shards = sorted((cache / "acts" / hook).glob("shard_*.npy"))
    return np.concatenate([np.load(s, mmap_mode="r") for s in shards]).astype(np.float32)


def train_sparsify(batches, d_in: int, num_latents: int, k: int, *, lr: float | None = None,
                   options: dict | None = None):
    """sparsify's SparseCoder trained on ``batches`` ((B, d_in) tensors) by the body of
    sparsify.Trainer.fit for loss_fn="fvu" (its Trainer needs a model and a token dataset):
    b_dec = mean of the first batch, decoder rows renormalised before each step, loss = FVU
    (+ multi-TopK FVU / 8), gradient parallel to the decoder rows removed, SignSGD in a
    ScheduleFreeWrapper (momentum 0.95) at lr 5e-3 / sqrt(num_latents / 2^14) (its signum
    default) unless ``lr``, auxk_alpha = 0 (its default). ``options``: SparseCoderConfig
    fields. Returns the SAE with the schedule-free averaged weights (what sparsify saves), the
    training wall time (s) and the lr."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=num_latents, k=k, **(options or {})))
    lr = 5e-3 / (sae.num_latents / 2**14) ** 0.5 if lr is None else lr
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    opt.train()
    t0 = time.perf_counter()
    for step, x in enumerate(batches):
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        o = sae(x, dead_mask=None, total_variance=total_variance)
        (o.fvu + o.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    opt.eval()
    return sae, time.perf_counter() - t0, lr


def _worker(job: dict) -> None:
    """Train one peer SAE on rows[order] in batches; write its folder and the wall time."""
    import warnings

    warnings.filterwarnings("ignore")
    rows = torch.from_numpy(_load_rows(pathlib.Path(job["cache"]), job["hook"]))
    order = torch.from_numpy(np.load(job["order"]))
    B, F, k, lib = job["batch_size"], job["d_sae"], job["k"], job["lib"]
    D = rows.shape[1]
    steps = len(order) // B

    def batches():
        for s in range(steps):
            yield rows[order[s * B:(s + 1) * B]]

    torch.manual_seed(job["seed"])
    out = pathlib.Path(job["out"])
    if lib == "sparsify":
        sae, wall, lr = train_sparsify(batches(), D, F, k)
        sae.save_to_disk(out)
    else:
        from sae_lens import (
            LanguageModelSAERunnerConfig,
            SAETrainer,
            TopKTrainingSAE,
            TopKTrainingSAEConfig,
        )
        from sae_lens.config import LoggingConfig

        # The runner config's defaults, turned into the trainer config as SAELens's runner does.
        run_cfg = LanguageModelSAERunnerConfig(
            sae=TopKTrainingSAEConfig(d_in=D, d_sae=F, k=k), training_tokens=steps * B,
            train_batch_size_tokens=B, device="cpu", logger=LoggingConfig(log_to_wandb=False))
        tcfg = run_cfg.to_sae_trainer_config()
        tcfg.checkpoint_path = None
        sae = TopKTrainingSAE(run_cfg.sae)
        lr = tcfg.lr
        t0 = time.perf_counter()
        trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=batches())
        sae = trainer.fit()
        wall = time.perf_counter() - t0
        sae.save_inference_model(out)
    (out / "wall.json").write_text(json.dumps({"wall_s": wall, "lr": lr, "steps": steps}))


# ------------------------------------------------------------------ driver (our venv)
def _peers_python(arg: str | None) -> str:
    """The first interpreter that has sae_lens and sparsify (as tests/saes/test_interop.py looks)."""
    check = ("import importlib.util as u, sys; "
             "sys.exit(0 if u.find_spec('sae_lens') and u.find_spec('sparsify') else 1)")
    for cand in (arg, os.environ.get("SAELENS_LITE_PEERS_PYTHON"),
                 REPO / ".venv-peers" / "bin" / "python", "/work/peers-venv/bin/python"):
        if cand and pathlib.Path(cand).exists() and subprocess.run(
                [str(cand), "-c", check], capture_output=True).returncode == 0:
            return str(cand)
    raise SystemExit("no interpreter with sae_lens and sparsify: run `make peers-venv` or pass "
                     "--peers-python")


def _ensure_cache(args):
    from saelens_lite.cache import ActivationCache

    path = pathlib.Path(args.cache)
    if not (path / "manifest.json").exists():
        from saelens_lite.cache.harvest import HarvestConfig, harvest

        log.info("harvesting %d tokens of %s at %s into %s", args.harvest_tokens, args.model,
                 args.hook, path)
        harvest(HarvestConfig(model=args.model, hooks=[args.hook], tokens=args.harvest_tokens),
                path)
    cache = ActivationCache(path)
    if args.hook not in cache.hook_names:
        raise SystemExit(f"{path} has no hook {args.hook}; it holds {cache.hook_names}")
    return cache


def _score(sae, x_ND: torch.Tensor, chunk: int = 4096) -> dict:
    """FVU, L0, dead fraction and fvu_typical (FVU over the rows whose norm is at most 5x the
    median: SmolLM2's position-1 tokens reach ~120x and can set the FVU), as `saelens-lite
    eval` computes them (evals.metrics)."""
    from saelens_lite.evals.metrics import reconstruction_stats

    r = reconstruction_stats(sae, x_ND, batch_size=chunk, progress=False).result()
    return {"fvu": r["fvu"], "fvu_typical": r["fvu_typical"], "outlier_rows": r["outlier_tokens"],
            "l0": r["l0"], "dead_frac": r["dead_fraction"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default="runs/quality_vs_peers/cache",
                   help="activation cache folder; harvested when absent")
    p.add_argument("--hook", default="blocks.9.hook_resid_post")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--harvest-tokens", type=int, default=200_000)
    p.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tail of the cache")
    p.add_argument("--tokens", type=int, default=1_000_000, help="training tokens, each SAE")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", default=["ours", "sparsify", "saelens"],
                   choices=["ours", "sparsify", "saelens"])
    p.add_argument("--ours-set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override TrainConfig fields of our run (JSON values), e.g. "
                        "warmup_steps=24; the row is labelled with them")
    p.add_argument("--drop-outlier-rows", type=float, default=None, metavar="R",
                   help="leave the training rows whose norm exceeds R x their median norm out of every "
                        "library's training stream (the held-out rows are all scored as before)")
    p.add_argument("--peers-python", default=None)
    p.add_argument("--out", default="runs/quality_vs_peers")
    p.add_argument("--md", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    from saelens_lite.saes.interop import load_any
    from saelens_lite.training import TrainConfig, train
    from saelens_lite.training.data import DataSource

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _ensure_cache(args)
    rows = _load_rows(pathlib.Path(args.cache), args.hook)
    N, D = rows.shape
    n_train = N - args.eval_tokens
    if n_train < args.batch_size:
        raise SystemExit(f"cache holds {N} tokens: too few for --eval-tokens {args.eval_tokens}")
    steps = args.tokens // args.batch_size
    keep = np.arange(n_train)
    if args.drop_outlier_rows is not None:
        norms = np.linalg.norm(rows[:n_train].astype(np.float64), axis=1)
        keep = np.flatnonzero(norms <= args.drop_outlier_rows * np.median(norms))
        log.info("--drop-outlier-rows %g: %d of %d training rows left out", args.drop_outlier_rows,
                 n_train - len(keep), n_train)
    n_perm = math.ceil(steps * args.batch_size / len(keep))
    order = np.concatenate([keep[np.random.default_rng([args.seed, e]).permutation(len(keep))]
                            for e in range(n_perm)])[: steps * args.batch_size]
    np.save(out / "order.npy", order)
    x_eval = torch.from_numpy(rows[n_train:])
    F = args.expansion * D
    log.info("cache %s: %d tokens (D=%d); train %d rows x %.2f passes, %d steps of %d; "
             "held-out %d; F=%d k=%d", args.cache, N, D, n_train, steps * args.batch_size / n_train,
             steps, args.batch_size, len(x_eval), F, args.k)

    class Ordered(DataSource):
        """Batches rows[order] in order (the same stream the peers get)."""

        def __init__(self):
            self.widths, self.n_tokens = {args.hook: D}, n_train
            self.rows = torch.from_numpy(rows)

        def batches(self, batch_size, *, seed, start_batch=0):
            for s in range(start_batch, len(order) // batch_size):
                yield {args.hook: self.rows[order[s * batch_size:(s + 1) * batch_size]]}

        def sample(self, n, *, seed):  # init statistics: the first n rows of the stream
            return {args.hook: self.rows[order[:n]]}

    results = {}
    if "ours" in args.only:
        overrides = {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in args.ours_set}
        cfg = TrainConfig.from_dict({**dict(
            architecture="topk", hooks=[args.hook], expansion=args.expansion, k=args.k,
            tokens=steps * args.batch_size, batch_size=args.batch_size, out_dir=str(out / "ours"),
            progress=False, device="cpu", seed=args.seed), **overrides})
        name = "saelens_lite" + (f" ({', '.join(args.ours_set)})" if overrides else "")
        t0 = time.perf_counter()
        sae = train(cfg, Ordered())
        results[name] = {"wall_s": time.perf_counter() - t0, "lr": cfg.lr_for(F)}
        results[name] |= _score(sae, x_eval)
        log.info("%s: %s", name, results[name])
    python = _peers_python(args.peers_python) if set(args.only) - {"ours"} else None
    for lib in ("sparsify", "saelens"):
        if lib not in args.only:
            continue
        folder = out / lib
        job = {"lib": lib, "cache": str(pathlib.Path(args.cache).resolve()), "hook": args.hook,
               "order": str((out / "order.npy").resolve()), "batch_size": args.batch_size,
               "d_sae": F, "k": args.k, "seed": args.seed, "out": str(folder.resolve())}
        (out / f"{lib}_job.json").write_text(json.dumps(job))
        log.info("training %s under %s", lib, python)
        r = subprocess.run([python, __file__, "--worker", str(out / f"{lib}_job.json")])
        if r.returncode:
            raise SystemExit(f"{lib} worker failed ({r.returncode})")
        results[lib] = json.loads((folder / "wall.json").read_text())
        results[lib] |= _score(load_any(folder), x_eval)
        log.info("%s: %s", lib, results[lib])

    meta = {"cache": args.cache, "hook": args.hook, "D": D, "F": F, "k": args.k,
            "train_tokens": steps * args.batch_size, "batch_size": args.batch_size,
            "steps": steps, "train_rows": n_train, "eval_tokens": len(x_eval),
            "torch_threads": torch.get_num_threads()}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    table = format_table(meta, results)
    print(table)
    if args.md:
        pathlib.Path(args.md).write_text(table)
    return 0


def format_table(meta: dict, results: dict) -> str:
    lines = [f"TopK SAEs on {meta['hook']} (D={meta['D']}, F={meta['F']}, k={meta['k']}), "
             f"{meta['train_tokens']:,} training tokens ({meta['steps']} steps x "
             f"{meta['batch_size']}) from {meta['train_rows']:,} cached rows; scored on "
             f"{meta['eval_tokens']:,} held-out tokens. CPU, {meta['torch_threads']} threads.", "",
             "| library | FVU | FVU, rows <= 5x median norm | L0 | dead fraction | "
             "train wall time (s) | lr |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lr = f"{r['lr']:.2e}" if r.get("lr") else "-"
        typ = f"{r['fvu_typical']:.4f}" if "fvu_typical" in r else "-"
        lines.append(f"| {name} | {r['fvu']:.4f} | {typ} | {r['l0']:.1f} | {r['dead_frac']:.3f} | "
                     f"{r['wall_s']:.0f} | {lr} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(json.loads(pathlib.Path(sys.argv[2]).read_text()))
    else:
        sys.exit(main())
