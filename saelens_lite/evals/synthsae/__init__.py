"""SynthSAEBench (Chanin & Garriga-Alonso 2026, arXiv 2602.14687): a synthetic model with known
features (``model``, its hierarchy in ``hierarchy``), the scores of an SAE against them
(``metrics``) and the benchmark that trains and scores each architecture (``run``)."""

from saelens_lite.evals.synthsae.metrics import abs_cosines, mcc, score_sae, uniqueness
from saelens_lite.evals.synthsae.model import SynthSAEConfig, SynthSAEModel
from saelens_lite.evals.synthsae.run import (
           SynthSAERun,
           format_table,
           run_bench,
           score_saved,
           write_results,
)

__all__ = ["SynthSAEConfig", "SynthSAEModel", "abs_cosines", "mcc", "uniqueness", "score_sae", "SynthSAERun",
           "run_bench", "score_saved", "format_table", "write_results"]
