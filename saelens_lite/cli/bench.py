"""``saelens-lite bench synthetic``: the ground-truth benchmark on toy superposition data;
``saelens-lite bench synthsae``: SynthSAEBench-16k (evals.synthsae);
``saelens-lite bench probing``: sparse probing on the SAE-Probes datasets of labelled text;
``saelens-lite bench probing-corpus``: those datasets' training-split texts, to train an SAE on-domain."""

from __future__ import annotations

import argparse
from pathlib import Path

from saelens_lite.cli._common import Formatter, arch_options_help, parse_arch_options


def add(sub) -> None:
    from saelens_lite.evals.hierarchy import HierarchyConfig
    from saelens_lite.evals.synthetic import SyntheticConfig
    from saelens_lite.saes import architectures

    p = sub.add_parser("bench", help="benchmarks with a known answer", formatter_class=Formatter)
    bench_sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    s = bench_sub.add_parser("synthetic", formatter_class=Formatter,
                             help="recover a known dictionary of features in superposition",
                             description="Generate tokens from more sparse features than dimensions (toy "
                                         "models of superposition), train one SAE per architecture with "
                                         "saelens_lite.training.train and score it against the true "
                                         "dictionary: MMCS, fraction recovered at cos > 0.9, firing F1 "
                                         "(--setting hierarchical: parent and child features instead, plus "
                                         "exact absorption rates). "
                                         "An architecture without one decoder direction per latent (the "
                                         "conv baseline) gets a row saying why it is not scored.",
                             epilog=arch_options_help("ARCH.KEY=VALUE"))
    defaults = SyntheticConfig()
    s.add_argument("--arch", nargs="+", choices=architectures(), default=None,
                   help="architectures to run (default: every registered one)")
    s.add_argument("--d", type=int, default=defaults.d, help="activation width D")
    s.add_argument("--features", type=int, default=defaults.n_features, help="true features G")
    s.add_argument("--mean-active", type=float, default=defaults.mean_active, help="features on per token")
    s.add_argument("--correlation", type=float, default=defaults.correlation, help="co-firing correlation")
    s.add_argument("--frequency-decay", type=float, default=defaults.frequency_decay,
                   help="firing rate ∝ (g+1)^-decay")
    s.add_argument("--magnitude-spread", type=float, default=defaults.magnitude_spread,
                   help="per-firing magnitude ~ U(1-s, 1+s)")
    s.add_argument("--scale-spread", type=float, default=defaults.scale_spread,
                   help="per-feature scale exp(s N(0,1))")
    s.add_argument("--noise-std", type=float, default=defaults.noise_std, help="additive Gaussian noise")
    s.add_argument("--setting", choices=("superposition", "hierarchical"), default="superposition",
                   help="superposition: independent features (--features, --mean-active, ...); hierarchical: "
                        "parents whose mutually exclusive children fire only with them (--parents, --children, "
                        "--parent-rate, --child-rate), adding exact absorption scores (evals.hierarchy)")
    hdefaults = HierarchyConfig()
    s.add_argument("--parents", type=int, default=hdefaults.n_parents, help="hierarchical: parent features P")
    s.add_argument("--children", type=int, default=hdefaults.children, help="hierarchical: children per parent")
    s.add_argument("--parent-rate", type=float, default=hdefaults.parent_rate,
                   help="hierarchical: probability that a parent fires")
    s.add_argument("--child-rate", type=float, default=hdefaults.child_rate,
                   help="hierarchical: probability that one child fires with its parent")
    s.add_argument("--latents", type=int, default=None, help="SAE latents (default: 2 x features)")
    s.add_argument("--k", type=int, default=None, help="k of topk / batchtopk (default: round(mean-active))")
    s.add_argument("--sparsity-coeff", type=float, default=None,
                   help="L1 / L0 coefficient of relu / jumprelu (default: the benchmark's per-architecture one)")
    s.add_argument("--train-tokens", type=int, default=None, help="training tokens (default: the benchmark's)")
    s.add_argument("--n-train", type=int, default=400_000, help="distinct synthetic training tokens")
    s.add_argument("--eval-tokens", type=int, default=20_000, help="fresh tokens the scores are measured on")
    s.add_argument("--seed", type=int, default=0, help="seed of the toy model")
    s.add_argument("--option", action="append", default=[], metavar="ARCH.KEY=VALUE",
                   help="SAEConfig field for one architecture (repeatable), e.g. --option "
                        "jumprelu.jumprelu_l0_adapt=0")
    s.add_argument("--json", default=None, help="also write the rows to this JSON file")
    s.set_defaults(func=run_synthetic)
    _add_probing(bench_sub)
    _add_probing_corpus(bench_sub)
    add_synthsae(bench_sub)


def _add_probing(bench_sub) -> None:
    from saelens_lite.evals.probing.run import POOLING_CHOICES, ProbingConfig
    from saelens_lite.util.dataclass_args import add_dataclass_args

    s = bench_sub.add_parser("probing", formatter_class=Formatter,
                             help="sparse probing on labelled text: k latents against a dense probe",
                             description="Kantamneni et al. 2025 (SAE-Probes) and SAEBench's sparse probing: on each "
                                         "binary dataset of the sae-probes wheel, fit a dense L2 logistic probe on "
                                         "the hook's activations and probes on the k latents with the largest mean "
                                         "difference (and on all latents) of each autoencoder; write test AUC and "
                                         "accuracy per dataset and their means (results.md, results.json) and the "
                                         "AUC-vs-k plot (auc_vs_k.png) to --out. Activations and results are cached, "
                                         "so a re-run resumes. Multiclass and numeric datasets are skipped.")
    s.add_argument("--sae", nargs="+", required=True, metavar="DIR",
                   help="autoencoder folders (saelens-lite train, or compare's models/NAME/model)")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_dataclass_args(s, ProbingConfig, choices={"pooling": POOLING_CHOICES}, aliases={"ks": ["--k"]})
    s.set_defaults(func=run_probing)


def run_probing(args: argparse.Namespace) -> int:
    from saelens_lite.evals.probing.report import DENSE, means
    from saelens_lite.evals.probing.run import ProbingConfig, run_probing
    from saelens_lite.util.dataclass_args import dataclass_from_args

    result = run_probing(args.sae, dataclass_from_args(ProbingConfig, args), args.out)
    for (sae, hook, pooling, probe), v in means(result["rows"]).items():
        if sae == DENSE or probe in ("k=1", f"k={max(args.ks)}", "all"):
            print(f"{sae:36s} {hook} {pooling:4s} {probe:6s} mean AUC {v['auc']:.3f} accuracy {v['accuracy']:.3f} "
                  f"over {v['n']} datasets")
    print(f"wrote results.md, results.json and auc_vs_k.png to {args.out}")
    return 0


CORPUS_FIELDS = ("datasets", "max_examples", "test_fraction", "seed", "min_per_class", "data_dir")
"""The ProbingConfig fields `bench probing-corpus` takes: those that choose the datasets and split."""


def _add_probing_corpus(bench_sub) -> None:
    import dataclasses

    from saelens_lite.evals.probing.run import ProbingConfig
    from saelens_lite.util.dataclass_args import add_dataclass_args

    s = bench_sub.add_parser("probing-corpus", formatter_class=Formatter,
                             help="the probing datasets' training-split texts as a corpus (on-domain SAEs)",
                             description="Write the training-split texts of the probing datasets (the split that "
                                         "`bench probing` draws with the same --max-examples, --test-fraction and "
                                         "--seed) to a .jsonl file for `saelens-lite harvest --dataset FILE`: an "
                                         "SAE trained on it has read no test text. A text held out by any "
                                         "selected dataset is dropped, each text is written once, and the order is "
                                         "shuffled with --seed.")
    s.add_argument("--out", required=True, metavar="FILE.jsonl", help="the corpus to write")
    add_dataclass_args(s, ProbingConfig, skip=tuple(f.name for f in dataclasses.fields(ProbingConfig)
                                                    if f.name not in CORPUS_FIELDS))
    s.set_defaults(func=run_probing_corpus)


def run_probing_corpus(args: argparse.Namespace) -> int:
    from saelens_lite.evals.probing import data
    from saelens_lite.evals.probing.corpus import write_train_corpus
    from saelens_lite.evals.probing.run import ProbingConfig
    from saelens_lite.util.dataclass_args import dataclass_from_args

    cfg = dataclass_from_args(ProbingConfig, args)  # bench probing's own checks: what it refuses is refused here
    names = cfg.datasets or data.default_datasets(cfg.data_dir or None, min_per_class=cfg.min_per_class)
    counts = write_train_corpus(args.out, names, max_examples=cfg.max_examples, test_fraction=cfg.test_fraction,
                                seed=cfg.seed, data_dir=cfg.data_dir or None)
    print(f"wrote {counts['texts']:,} texts from {counts['datasets']} datasets' training splits to {args.out} "
          f"({counts['dropped_in_a_test_split']:,} dropped: in a test split; {counts['duplicates']:,} duplicates)")
    return 0


def add_synthsae(bench_sub) -> None:
    from saelens_lite.evals.synthsae import SynthSAEConfig, SynthSAERun

    run = SynthSAERun()
    s = bench_sub.add_parser("synthsae", formatter_class=Formatter,
                             help="SynthSAEBench-16k: recover 16,384 known hierarchical features in 768 dims",
                             description="Build the SynthSAEBench-16k synthetic model (Chanin & Garriga-Alonso "
                                         "2026) from its published spec, train one SAE per --arch on --samples "
                                         "samples streamed from it (never stored), and score each on held-out "
                                         "samples: MCC (Hungarian matching of decoder rows to true features), "
                                         "per-latent F1 / precision / recall, uniqueness, explained variance, "
                                         "L0, dead latents, shrinkage. --sae scores a saved SAE instead. Writes "
                                         "OUT.json and OUT.md (the table) once everything is scored.",
                             epilog=arch_options_help("ARCH.KEY=VALUE"))
    s.add_argument("--arch", nargs="+", default=run.architectures, metavar="ARCH",
                   help="architectures to train, one SAE each")
    s.add_argument("--samples", type=int, default=run.samples, help="training samples per SAE (published: 200M)")
    s.add_argument("--width", type=int, default=run.width, help="SAE latents")
    s.add_argument("--l0", type=int, default=run.l0, help="k of topk/batchtopk/matryoshka, target L0 of jumprelu")
    s.add_argument("--batch-size", type=int, default=run.batch_size, help="samples per optimiser step")
    s.add_argument("--lr", type=float, default=None,
                   help="Adam lr (default: the trainer's rule for the width and run length; published: 3e-4)")
    s.add_argument("--seed", type=int, default=run.seed, help="seed of the SAE init and the training stream")
    s.add_argument("--eval-samples", type=int, default=run.n_eval, help="held-out samples the scores use")
    s.add_argument("--eval-seed", type=int, default=run.eval_seed, help="seed of the held-out stream")
    s.add_argument("--features", type=int, default=SynthSAEConfig.n_features,
                   help="true features G (16384: SynthSAEBench-16k; smaller scales the hierarchy's roots)")
    s.add_argument("--d", type=int, default=SynthSAEConfig.d, help="model width D")
    s.add_argument("--model-seed", type=int, default=SynthSAEConfig.seed, help="seed of the synthetic model")
    s.add_argument("--model-cache", default=str(Path.home() / ".cache" / "saelens_lite" / "synthsae"),
                   help="folder caching the built model's dictionary ('' : none)")
    s.add_argument("--sae", default=None, metavar="DIR", help="score this saved SAE instead of training")
    s.add_argument("--option", action="append", default=[], metavar="ARCH.KEY=VALUE",
                   help="SAEConfig field for one architecture (repeatable)")
    s.add_argument("--save-dir", default=None, metavar="DIR",
                   help="keep each trained SAE in DIR/ARCH/synthsae (default: a temporary folder, deleted)")
    s.add_argument("--dead-min-rate", type=float, default=None, metavar="RATE",
                   help="also feed AuxK the latents that fire on fewer than RATE of the samples (default: "
                        "only latents silent for the dead window)")
    s.add_argument("--checkpoint-every", type=int, default=0, metavar="SAMPLES",
                   help="write a resumable checkpoint every SAMPLES training samples (0: never; needs --save-dir)")
    s.add_argument("--resume", action="store_true",
                   help="continue interrupted runs from their newest checkpoints in --save-dir")
    s.add_argument("--out", default="synthsae", help="writes OUT.json and OUT.md")
    s.set_defaults(func=run_synthsae)


def run_synthsae(args: argparse.Namespace) -> int:
    from saelens_lite.evals.synthsae import (
        SynthSAEConfig,
        SynthSAERun,
        run_bench,
        score_saved,
        write_results,
    )

    cfg = SynthSAEConfig.scaled(args.features, d=args.d, seed=args.model_seed)
    cache = args.model_cache or None
    if args.sae:
        result = score_saved(cfg, args.sae, n_eval=args.eval_samples, eval_seed=args.eval_seed, model_cache=cache)
    else:
        run = SynthSAERun(architectures=list(args.arch), samples=args.samples, width=args.width, l0=args.l0,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed, n_eval=args.eval_samples,
                          eval_seed=args.eval_seed, sae_options=parse_arch_options(args.option),
                          checkpoint_every=args.checkpoint_every, resume=args.resume,
                          dead_min_rate=args.dead_min_rate)
        result = run_bench(cfg, run, model_cache=cache, save_dir=args.save_dir, progress=True)
    js, md = write_results(result, args.out)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    import json

    from saelens_lite.evals.hierarchy import HierarchyConfig
    from saelens_lite.evals.synthetic import SyntheticConfig, format_table, run_benchmark

    if args.setting == "hierarchical":
        cfg = HierarchyConfig(d=args.d, n_parents=args.parents, children=args.children,
                              parent_rate=args.parent_rate, child_rate=args.child_rate,
                              magnitude_spread=args.magnitude_spread, noise_std=args.noise_std, seed=args.seed)
    else:
        cfg = SyntheticConfig(d=args.d, n_features=args.features, mean_active=args.mean_active,
                              correlation=args.correlation, frequency_decay=args.frequency_decay,
                              magnitude_spread=args.magnitude_spread, scale_spread=args.scale_spread,
                              noise_std=args.noise_std, seed=args.seed)
    train_options = {} if args.train_tokens is None else {"tokens": args.train_tokens}
    rows = run_benchmark(args.arch, cfg=cfg, n_train=args.n_train, k=args.k, latents=args.latents,
                         sparsity_coeff=args.sparsity_coeff, train_options=train_options,
                         sae_options=parse_arch_options(args.option), n_eval=args.eval_tokens)
    print(format_table(rows, cfg.build().columns))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args) | {"func": None}, "rows": rows}, f, indent=2)
    return 0
