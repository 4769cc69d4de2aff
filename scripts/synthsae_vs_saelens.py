"""Our SynthSAEBench (saelens_lite.evals.synthsae) against SAELens' ``sae_lens.synthetic``:

    # the generator, statistic by statistic, on the same config (docs/synthsae.md)
    .venv/bin/python scripts/synthsae_vs_saelens.py stats --samples 32768 --out runs/synthsae/stats
    # each metric on the same SAE and the same samples, to 1e-3
    .venv/bin/python scripts/synthsae_vs_saelens.py metrics --out runs/synthsae/metrics
    # SAELens' own trainer (SyntheticSAERunner) at a given number of samples, scored by both
    .venv/bin/python scripts/synthsae_vs_saelens.py runner --arch batchtopk --samples 1000000 \\
        --out runs/synthsae/saelens_batchtopk
    # sparsify's TopK (its own training recipe) on the very batches `bench synthsae --seed S` trains on
    .venv/bin/python scripts/synthsae_vs_saelens.py sparsify --samples 1024000 --seed 0 \\
        --out runs/synthsae/sparsify_topk

SAELens and sparsify run in a subprocess under the peers' interpreter (``.venv-peers``): this file
re-runs itself there with ``--worker JOB.json``; a worker imports sae_lens (or sparsify), torch and
numpy, and our generator where it trains on our samples.

* stats: their SyntheticModel is built from the same config with ``orthogonalization=None``
  (its 100 full G x G steps take ~40 CPU-minutes; no firing statistic depends on the
  dictionary). With ``--shared`` (the default) it also takes our two other random draws, the
  correlation factor and the per-feature magnitude stds, so each feature's final rate must agree
  (a child's rate depends on its correlation with its parent and siblings; two independent draws
  of the model agree only in distribution). Compared: the firing-probability vector (exact, it is deterministic), per-feature
  firing rates (a two-sample z-test per feature, and the share outside |z| < 3), L0, the rate of
  each hierarchy level, exclusivity (sibling groups with two children on, children on without
  their parent), magnitudes (mean per level, and of the per-feature stds).
* metrics: our scores (``metrics.abs_cosines / mcc / uniqueness / ScoreAccumulator``) and theirs
  (``mean_correlation_coefficient``, ``feature_uniqueness``, the calculators of
  ``sae_lens.synthetic.evals``) on one trained SAE's decoder, latents and reconstructions.
* runner: ``SyntheticSAERunner`` on their model of the same config whose feature dictionary is
  ours (so the orthogonalisation is not redone), batch 1024, lr 3e-4 (the published recipe).
  ``SyntheticSAERunnerConfig`` (sae-lens 6.54.12) has no seed: the SAE's initialisation and
  every training batch draw from torch's global generator, so ``--seed S`` calls
  ``torch.manual_seed(S)`` just before the runner is built; without ``--seed`` that generator is
  left in its start-up state (deterministic too, but no seed).
* sparsify: sparsify's ``SparseCoder`` (TopK) trained by ``quality_vs_peers.train_sparsify``
  (the body of ``sparsify.Trainer.fit``: SignSGD, schedule-free, lr 5e-3 / sqrt(F / 2^14), no
  dead-latent loss, its defaults) on our generator's training stream of seed ``--seed`` (default
  0), batch 1,024, after ``torch.manual_seed(seed)`` (its initialisation); saved with its own
  saver and scored by ``bench synthsae``'s scorer on our held-out stream.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = ("mcc", "uniqueness", "f1", "precision", "recall", "accuracy", "explained_variance", "l0",
               "true_l0", "dead_latents", "shrinkage")


# ------------------------------------------------------------------ worker (peers' interpreter)


def _their_model(cfg: dict, W=None, bias=None, F=None):
    from sae_lens.synthetic import (
        FeatureDictionary,
        FoldedNormalMagnitudeConfig,
        HierarchyConfig,
        LinearMagnitudeConfig,
        LowRankCorrelationConfig,
        LowRankCorrelationMatrix,
        SyntheticModel,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
    )

    mcfg = SyntheticModelConfig(
        num_features=cfg["n_features"], hidden_dim=cfg["d"],
        firing_probability=ZipfianFiringProbabilityConfig(exponent=cfg["zipf_exponent"], max_prob=cfg["p_max"],
                                                          min_prob=cfg["p_min"]),
        hierarchy=HierarchyConfig(total_root_nodes=cfg["n_roots"], branching_factor=cfg["branching"],
                                  max_depth=cfg["depth"], mutually_exclusive_portion=1.0 if cfg["exclusive"] else 0.0,
                                  mutually_exclusive_min_depth=0, compensate_probabilities=cfg["compensate"],
                                  scale_children_by_parent=cfg["scale_children"]) if cfg["n_roots"] else None,
        orthogonalization=None,
        correlation=LowRankCorrelationConfig(rank=cfg["corr_rank"], correlation_scale=cfg["corr_scale"]),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=cfg["mean_start"], end=cfg["mean_end"]),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=cfg["std_mean"], std=cfg["std_std"]),
        bias=cfg["bias_norm"], seed=cfg["seed"])
    fd = None
    if W is not None:
        fd = FeatureDictionary(cfg["n_features"], cfg["d"], bias=cfg["bias_norm"], initializer=None)
        fd.feature_vectors.data = torch.as_tensor(W)
        fd.bias.data = torch.as_tensor(bias)
    corr = None
    if F is not None:
        F = torch.as_tensor(F)
        corr = LowRankCorrelationMatrix(F, 1 - (F**2).sum(1))
    return SyntheticModel(mcfg, feature_dict=fd, correlation_matrix=corr)


def stats_of(batches, p_G, mean_G, std_G, forest_starts, branching) -> dict:
    """Firing statistics of (B, G) coefficient batches (shared by both sides: plain torch)."""
    G = len(p_G)
    n, count = 0, torch.zeros(G, dtype=torch.float64)
    mag = torch.zeros(G, dtype=torch.float64)
    l0s, clash, orphan = [], 0, 0
    for c in batches:
        on = c > 0
        n += len(c)
        count += on.sum(0).double()
        mag += c.double().sum(0)
        l0s.append(on.sum(1).double())
        for a, b, e in zip(forest_starts[:-2], forest_starts[1:-1], forest_starts[2:]):
            kids = on[:, b:e].view(len(c), -1, branching)
            clash += int((kids.sum(-1) > 1).sum())
            orphan += int((kids & ~on[:, a:b, None]).sum())
    l0 = torch.cat(l0s)
    levels = [float(count[a:b].sum() / n) for a, b in zip(forest_starts[:-1], forest_starts[1:])]
    free = float(count[forest_starts[-1]:].sum() / n)
    return {"n": n, "rate_G": (count / n).tolist(), "mean_mag_G": (mag / count.clamp_min(1)).tolist(),
            "l0_mean": float(l0.mean()), "l0_std": float(l0.std()), "level_l0": levels, "free_l0": free,
            "sibling_clashes": clash, "orphans": orphan, "p_G": [float(v) for v in p_G],
            "mean_G": [float(v) for v in mean_G], "std_mean": float(std_G.mean()), "std_std": float(std_G.std())}


def worker_stats(job: dict) -> dict:
    cfg = job["config"]
    torch.manual_seed(job["seed"])
    shared = np.load(job["shared"]) if job.get("shared") else None
    m = _their_model(cfg, F=shared["F_GR"] if shared is not None else None)
    gen = m.activation_generator
    if shared is not None:
        gen.std_firing_magnitudes = torch.as_tensor(shared["std_G"])
    B = 1024
    batches = (gen.sample(min(B, job["samples"] - i)) for i in range(0, job["samples"], B))
    return stats_of(batches, gen.firing_probabilities, gen.mean_firing_magnitudes, gen.std_firing_magnitudes,
                    job["forest_starts"], cfg["branching"])


def worker_metrics(job: dict) -> dict:
    from sae_lens.evals import ExplainedVarianceCalculator
    from sae_lens.synthetic.evals import (
        ClassificationMetricsCalculator,
        DeadLatentsCalculator,
        L0Calculator,
        ShrinkageCalculator,
        feature_uniqueness,
        mean_correlation_coefficient,
    )

    d = {k: torch.from_numpy(v) for k, v in np.load(job["tensors"]).items()}
    cls = ClassificationMetricsCalculator(d["W_dec"], d["W_true"])
    l0, tl0, dead = L0Calculator(), L0Calculator(), DeadLatentsCalculator(d["W_dec"].shape[0])
    shr, ev = ShrinkageCalculator(), ExplainedVarianceCalculator()
    for i in range(0, len(d["x"]), 1000):
        sl = slice(i, i + 1000)
        cls.add_batch(d["acts"][sl], d["c"][sl])
        l0.add_batch(d["acts"][sl])
        tl0.add_batch(d["c"][sl])
        dead.add_batch(d["acts"][sl])
        shr.add_batch(d["x_hat"][sl], d["x"][sl])
        ev.add_batch(d["x_hat"][sl], d["x"][sl])
    c = cls.compute()
    return {"mcc": mean_correlation_coefficient(d["W_dec"], d["W_true"]),
            "uniqueness": feature_uniqueness(d["W_dec"], d["W_true"]), "f1": c.f1_score,
            "precision": c.precision, "recall": c.recall, "accuracy": c.accuracy,
            "explained_variance": ev.compute(), "l0": l0.compute(), "true_l0": tl0.compute(),
            "dead_latents": dead.compute(), "shrinkage": shr.compute()}


def _feed_our_samples(job: dict) -> None:
    """Make SAELens' runner train on our generator's training stream: batch b is
    ``SynthSAEModel.batch(B, stream=TRAIN_STREAM, seed=job["seed"], index=b)``, the very batches
    ``saelens-lite bench synthsae --seed S`` trains on. Only the runner's data iterator is
    replaced (its trainer, SAE, optimiser and schedule are SAELens' own)."""
    import sae_lens.synthetic.synthetic_sae_runner as runner_mod

    sys.path.insert(0, str(REPO))
    from saelens_lite.evals.synthsae.model import TRAIN_STREAM, SynthSAEConfig

    ours = SynthSAEConfig(**job["config"]).build(cache_dir=job.get("model_cache") or None)
    seed = job["seed"] or 0

    class OurStream:
        def __init__(self, feature_dict, activations_generator, batch_size, autocast=False):
            self.batch_size, self.index = batch_size, 0

        def __iter__(self):
            return self

        @torch.no_grad()
        def __next__(self) -> torch.Tensor:
            x_BD, _ = ours.batch(self.batch_size, stream=TRAIN_STREAM, seed=seed, index=self.index)
            self.index += 1
            return x_BD

    runner_mod.SyntheticActivationIterator = OurStream


def _their_sae_config(job: dict):
    """SAELens' training config of ``job["arch"]``: the published recipe's (SAELens
    synth-sae-bench-experiments ``sweeps/common.py``) where the library has it."""
    import sae_lens

    arch, kw = job["arch"], {"d_in": job["config"]["d"], "d_sae": job["width"]}
    if arch in ("batchtopk", "topk"):
        kw["k"] = job["l0"]
    elif arch == "matryoshka":  # published: inner widths 128, 512, 2048 (d_sae appended), matryoshka aux loss
        kw |= {"k": job["l0"], "matryoshka_widths": [w for w in (128, 512, 2048) if w < job["width"]],
               "use_matryoshka_aux_loss": True}
    elif arch == "jumprelu":  # the library's own target-L0 rule (GemmaScope 2's quadratic L0 loss)
        kw |= {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": float(job["l0"])}
    elif arch != "standard":
        raise ValueError(f"--arch {arch!r}: choose from batchtopk, topk, matryoshka, jumprelu, standard")
    kw |= job.get("options") or {}
    cls = {"batchtopk": sae_lens.BatchTopKTrainingSAEConfig, "topk": sae_lens.TopKTrainingSAEConfig,
           "matryoshka": sae_lens.MatryoshkaBatchTopKTrainingSAEConfig,
           "jumprelu": sae_lens.JumpReLUTrainingSAEConfig, "standard": sae_lens.StandardTrainingSAEConfig}[arch]
    return cls(**kw)


def worker_runner(job: dict) -> dict:
    import sae_lens
    from sae_lens import LoggingConfig
    from sae_lens.synthetic import (
        SyntheticSAERunner,
        SyntheticSAERunnerConfig,
        eval_sae_on_synthetic_data,
    )

    torch.set_num_threads(1)
    d = np.load(job["dictionary"])
    model = _their_model(job["config"], d["W_true"], d["bias"])
    if job.get("sampler", "theirs") == "ours":
        _feed_our_samples(job)
    # else their dense path: its sparse-COO path took 11.9 CPU-s per 1,024 samples here, the dense 1.3
    cfg = SyntheticSAERunnerConfig(synthetic_model=model.cfg, sae=_their_sae_config(job),
                                   training_samples=job["samples"], batch_size=job["batch_size"], lr=job["lr"],
                                   device="cpu", output_path=job["out"], run_final_eval=False, n_checkpoints=0,
                                   logger=LoggingConfig(log_to_wandb=False), **(job.get("runner_options") or {}))
    if job.get("seed") is not None:  # the SAE init and (their sampler) the training batches use the global generator
        torch.manual_seed(job["seed"])
    t = time.perf_counter()
    res = SyntheticSAERunner(cfg, override_synthetic_model=model).run()
    seconds = time.perf_counter() - t
    out = {"train_seconds": seconds, "their_eval_samples": job["their_n_eval"], "sae_dir": job["out"],
           "sae_lens_version": sae_lens.__version__, "sae_config": res.sae.cfg.to_dict()}
    if job["their_n_eval"]:
        e = eval_sae_on_synthetic_data(res.sae, model.feature_dict, model.activation_generator,
                                       num_samples=job["their_n_eval"], batch_size=1024)
        out["their_eval"] = e.to_dict()
    return out


def worker_sparsify(job: dict) -> dict:
    """sparsify's TopK SparseCoder trained on our training stream (batch b of seed job["seed"])."""
    import sparsify

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "scripts"))
    from quality_vs_peers import train_sparsify

    from saelens_lite.evals.synthsae.model import TRAIN_STREAM, SynthSAEConfig

    torch.set_num_threads(1)
    ours = SynthSAEConfig(**job["config"]).build(cache_dir=job.get("model_cache") or None)
    B, steps = job["batch_size"], job["samples"] // job["batch_size"]
    batches = (ours.batch(B, stream=TRAIN_STREAM, seed=job["seed"], index=b)[0] for b in range(steps))
    torch.manual_seed(job["seed"])
    sae, seconds, lr = train_sparsify(batches, job["config"]["d"], job["width"], job["l0"], lr=job["lr"],
                                      options=job.get("options"))
    sae.save_to_disk(job["out"])
    return {"train_seconds": seconds, "lr": lr, "steps": steps, "sae_dir": job["out"],
            "sparsify_version": getattr(sparsify, "__version__", None)}


# ------------------------------------------------------------------ our side


def peers_python(arg: str | None = None, probe: str = "import sae_lens.synthetic") -> str | None:
    """The first interpreter where ``probe`` runs (``--peers-python``, SAELENS_LITE_PEERS_PYTHON,
    .venv-peers)."""
    for cand in (arg, os.environ.get("SAELENS_LITE_PEERS_PYTHON"), REPO / ".venv-peers" / "bin" / "python",
                 "/work/peers-venv/bin/python"):
        if cand and Path(cand).exists() and subprocess.run(
                [str(cand), "-c", probe], capture_output=True).returncode == 0:
            return str(cand)
    return None


def run_worker(python: str, kind: str, job: dict, out: Path) -> dict:
    path = out / f"{kind}_job.json"
    path.write_text(json.dumps(job | {"kind": kind, "result": str(out / f"{kind}_peer.json")}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([python, __file__, "--worker", str(path)], check=True, env=env)
    return json.loads((out / f"{kind}_peer.json").read_text())


def our_stats(cfg, samples: int, seed: int) -> dict:
    model = cfg.build()
    st = model.forest.starts if model.forest else (0, 0)
    batches = (c.dense() for _, c in model.iter_batches(samples, 1024, stream=1, seed=seed))
    return stats_of(batches, model.p_G, model.mean_G, model.std_G, st, cfg.branching)


def compare_stats(ours: dict, theirs: dict) -> dict:
    """Differences (ours - theirs) with their standard errors where sampling noise applies."""
    r1, r2 = np.array(ours["rate_G"]), np.array(theirs["rate_G"])
    n1, n2 = ours["n"], theirs["n"]
    pooled = (r1 * n1 + r2 * n2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = np.where(se > 0, (r1 - r2) / np.where(se > 0, se, 1), 0.0)
    counted = pooled * min(n1, n2) >= 10  # the normal approximation needs ~10 expected firings
    l0_se = np.hypot(ours["l0_std"] / np.sqrt(n1), theirs["l0_std"] / np.sqrt(n2))
    m1, m2 = np.array(ours["mean_mag_G"]), np.array(theirs["mean_mag_G"])
    both = (r1 > 0) & (r2 > 0)
    return {"samples": [n1, n2],
            "p_G_max_abs_diff": float(np.max(np.abs(np.array(ours["p_G"]) - np.array(theirs["p_G"])))),
            "mean_G_max_abs_diff": float(np.max(np.abs(np.array(ours["mean_G"]) - np.array(theirs["mean_G"])))),
            "rate_z_share_abs_gt_3": float(np.mean(np.abs(z[counted]) > 3)),
            "rate_z_max_abs": float(np.abs(z[counted]).max()), "rate_z_features": int(counted.sum()),
            "rate_z_expected_share_gt_3": 0.0027, "rate_mean_z": float(z[counted].mean()),
            "l0": [ours["l0_mean"], theirs["l0_mean"]], "l0_z": float((ours["l0_mean"] - theirs["l0_mean"]) / l0_se),
            "level_l0": [ours["level_l0"], theirs["level_l0"]], "free_l0": [ours["free_l0"], theirs["free_l0"]],
            "sibling_clashes": [ours["sibling_clashes"], theirs["sibling_clashes"]],
            "orphans": [ours["orphans"], theirs["orphans"]],
            "magnitude_mean_when_on": [float(m1[both].mean()), float(m2[both].mean())],
            "std_G_mean": [ours["std_mean"], theirs["std_mean"]], "std_G_std": [ours["std_std"], theirs["std_std"]]}


def our_metrics_and_tensors(cfg, sae, n: int, seed: int, path: Path) -> dict:
    """Our scores on ``n`` held-out samples, and the same tensors saved for the peers."""
    from saelens_lite.evals.synthsae.metrics import ScoreAccumulator, abs_cosines, mcc, uniqueness

    model = cfg.build()
    x, c = zip(*[(x, c.dense()) for x, c in model.iter_batches(n, 4096, stream=1, seed=seed)])
    x_ND, c_NG = torch.cat(x), torch.cat(c)
    with torch.no_grad():
        acts = sae.encode(x_ND)
        x_hat = sae.decode(acts)
    W_dec = sae.W_dec.detach().float()
    A = abs_cosines(W_dec, model.W_true_GD)
    acc = ScoreAccumulator(A.argmax(1), cfg.d)
    for i in range(0, n, 1000):
        acc.update(x_ND[i:i + 1000], x_hat[i:i + 1000], acts[i:i + 1000], c_NG[i:i + 1000] > 0)
    np.savez(path, W_dec=W_dec.numpy(), W_true=model.W_true_GD.numpy(), x=x_ND.numpy(), x_hat=x_hat.numpy(),
             acts=acts.numpy(), c=c_NG.numpy())
    return {"mcc": mcc(A), "uniqueness": uniqueness(A)} | acc.result()


def metrics_command(args, python: str, out: Path) -> dict:
    from saelens_lite.evals.synthsae import SynthSAEConfig, SynthSAERun
    from saelens_lite.evals.synthsae.run import train_one
    from saelens_lite.saes.interop import load_any

    cfg = SynthSAEConfig.scaled(args.features, d=args.d)
    if args.sae:
        sae = load_any(args.sae)
    else:
        run = SynthSAERun(architectures=[args.arch], samples=args.samples, width=args.width, l0=args.l0)
        sae = train_one(cfg.build(), run, args.arch, out / "sae")
    ours = our_metrics_and_tensors(cfg, sae, args.eval_samples, args.eval_seed, out / "tensors.npz")
    theirs = run_worker(python, "metrics", {"tensors": str(out / "tensors.npz")}, out)
    diff = {k: abs(float(ours[k]) - float(theirs[k])) for k in METRIC_KEYS}
    return {"ours": ours, "theirs": theirs, "abs_diff": diff, "max_abs_diff": max(diff.values()),
            "eval_samples": args.eval_samples}


def _options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs as the CLI's ``--option`` reads them; a bad pair exits in one line."""
    from saelens_lite.cli._common import parse_options

    try:
        return parse_options(pairs)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def runner_job(args, out: Path):
    """The SynthSAE config and the peers worker's job of ``runner`` (our feature dictionary
    written to OUT/dictionary.npz; SAELens saves its SAE to OUT/sae)."""
    from dataclasses import asdict

    from saelens_lite.evals.synthsae import SynthSAEConfig

    cfg = SynthSAEConfig.scaled(args.features, d=args.d)
    model = cfg.build(cache_dir=args.model_cache or None)
    np.savez(out / "dictionary.npz", W_true=model.W_true_GD.numpy(), bias=model.bias_D.numpy())
    job = {"config": asdict(cfg), "dictionary": str(out / "dictionary.npz"), "arch": args.arch,
           "width": args.width, "l0": args.l0, "samples": args.samples, "batch_size": 1024,
           "lr": 3e-4 if args.lr is None else args.lr,
           "their_n_eval": args.eval_samples if args.their_eval_samples is None else args.their_eval_samples,
           "out": str(out / "sae"), "seed": args.seed, "sampler": args.sampler,
           "model_cache": args.model_cache, "options": _options(args.option),
           "runner_options": _options(args.runner_option)}
    return cfg, job


def sparsify_job(args, out: Path):
    """The SynthSAE config and the peers worker's job of ``sparsify`` (its SAE goes to OUT/sae)."""
    from dataclasses import asdict

    from saelens_lite.evals.synthsae import SynthSAEConfig

    cfg = SynthSAEConfig.scaled(args.features, d=args.d)
    job = {"config": asdict(cfg), "width": args.width, "l0": args.l0, "samples": args.samples,
           "batch_size": 1024, "lr": args.lr, "seed": 0 if args.seed is None else args.seed,
           "model_cache": args.model_cache, "options": _options(args.option), "out": str(out / "sae")}
    return cfg, job


def peer_train_command(args, python: str, out: Path) -> dict:
    """``runner`` or ``sparsify``: the peer trains in its interpreter, saves to OUT/sae, and we
    score that SAE on our held-out stream."""
    from saelens_lite.evals.synthsae import score_saved

    cfg, job = {"runner": runner_job, "sparsify": sparsify_job}[args.command](args, out)
    theirs = run_worker(python, args.command, job, out)
    ours = score_saved(cfg, out / "sae", n_eval=args.eval_samples, eval_seed=args.eval_seed,
                       model_cache=args.model_cache or None)
    return {"job": job, "theirs": theirs, "scored_by_us": ours["rows"][0]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=("stats", "metrics", "runner", "sparsify"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--features", type=int, default=16_384)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--samples", type=int, default=32_768, help="stats: samples per side; else training samples")
    p.add_argument("--seed", type=int, default=None,
                   help="stats: seed of both samplers (default 0); runner: torch.manual_seed before SAELens' "
                        "runner is built (default: none, torch's start-up generator state); sparsify: the "
                        "training stream's seed and torch.manual_seed before its SAE is built (default 0)")
    p.add_argument("--arch", default="batchtopk")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--l0", type=int, default=25)
    p.add_argument("--lr", type=float, default=None,
                   help="runner: SAELens' lr (default 3e-4, the published recipe); sparsify: its lr "
                        "(default: its rule, 5e-3 / sqrt(width / 2^14))")
    p.add_argument("--sae", default=None, help="metrics: cross-check this saved SAE instead of training one")
    p.add_argument("--eval-samples", type=int, default=20_000)
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--their-eval-samples", type=int, default=None,
                   help="runner: samples of their own eval (default: --eval-samples; 0: skip it)")
    p.add_argument("--sampler", choices=("ours", "theirs"), default="ours",
                   help="runner: training batches from our generator's training stream (seed --seed: the "
                        "batches `bench synthsae --seed S` trains on; 0.07 CPU-s per 1,024) or from "
                        "sae_lens.synthetic's own sampler (1.3 CPU-s per 1,024)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="runner: a field of SAELens' training SAE config (JSON value); sparsify: a field of "
                        "its SparseCoderConfig; repeatable")
    p.add_argument("--runner-option", action="append", default=[], metavar="KEY=VALUE",
                   help="runner: a field of SyntheticSAERunnerConfig (JSON value), repeatable; e.g. "
                        "dead_feature_window=250 lr_warm_up_steps=50 lr_decay_steps=200 (its default dead "
                        "window, 1,000 steps, is as long as a 1,024,000-sample run, so AuxK never acts there)")
    p.add_argument("--model-cache", default=str(Path.home() / ".cache" / "saelens_lite" / "synthsae"))
    p.add_argument("--peers-python", default=None)
    p.add_argument("--shared", action=argparse.BooleanOptionalAction, default=True,
                   help="stats: give their model our correlation factor and magnitude stds")
    p.add_argument("--out", default="runs/synthsae/compare")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.worker:
        job = json.loads(Path(args.worker).read_text())
        res = {"stats": worker_stats, "metrics": worker_metrics, "runner": worker_runner,
               "sparsify": worker_sparsify}[job["kind"]](job)
        Path(job["result"]).write_text(json.dumps(res))
        return 0
    if args.command is None:
        p.error("a command is required: stats, metrics, runner or sparsify")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    needs = "sparsify" if args.command == "sparsify" else "sae_lens.synthetic"
    python = peers_python(args.peers_python, f"import {needs}")
    if python is None:
        raise SystemExit(f"no interpreter with {needs}: run `make peers-venv` or pass --peers-python")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "stats":
        from dataclasses import asdict

        from saelens_lite.evals.synthsae import SynthSAEConfig

        cfg = SynthSAEConfig.scaled(args.features, d=args.d, ortho_steps=0)
        model = cfg.build()
        np.savez(out / "shared.npz", F_GR=model.F_GR.numpy(), std_G=model.std_G.numpy())
        seed = 0 if args.seed is None else args.seed
        job = {"config": asdict(cfg), "samples": args.samples, "seed": seed,
               "shared": str(out / "shared.npz") if args.shared else None,
               "forest_starts": list(model.forest.starts) if model.forest else [0, 0]}
        theirs = run_worker(python, "stats", job, out)
        result = compare_stats(our_stats(cfg, args.samples, seed), theirs) | {"shared_draws": args.shared}
    elif args.command == "metrics":
        result = metrics_command(args, python, out)
    else:
        result = peer_train_command(args, python, out)
    (out / f"{args.command}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("ours", "theirs")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
