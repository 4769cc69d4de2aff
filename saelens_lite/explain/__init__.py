"""Automatic explanations of SAE features, scored on held-out examples.

``explain(sae, cache, out, explainer=..., scorers=...)`` writes one JSONL record per feature.
Modules: ``config`` (ExplainConfig), ``examples`` (contexts from :mod:`saelens_lite.features`),
``prompts`` (delphi-style text), ``chat`` (transformers / OpenAI-compatible models),
``explainers`` and ``scorers`` (registries by name), ``embedding`` (the MiniLM encoder),
``select`` (--features), ``store`` (the resumable JSONL), ``runner`` (the batches).
See docs/explanations.md for the prompts, the scoring rules and their sources.
"""

from saelens_lite.explain.config import ExplainConfig
from saelens_lite.explain.examples import Context, ExampleSource, FeatureExamples
from saelens_lite.explain.explainers import EXPLAINERS, TemplateExplainer, make_explainer
from saelens_lite.explain.runner import explain, summarize
from saelens_lite.explain.scorers import SCORERS, auroc
from saelens_lite.explain.store import read_records

__all__ = ["ExplainConfig", "Context", "ExampleSource", "FeatureExamples", "EXPLAINERS",
           "TemplateExplainer", "make_explainer", "explain", "summarize", "SCORERS", "auroc",
           "read_records"]
