"""Explainers, chosen by a spec string (``--explainer``): registered by kind in :data:`EXPLAINERS`.

* ``template``: no model; a deterministic sentence from the explainer examples and the decoder's
  logit effects: the tokens the feature fires on, the tokens just before them, the tokens it
  boosts. Cheap and honest about what it is; also the fallback when a model's reply is empty.
* ``hf:NAME_OR_PATH``: a chat model that transformers loads (``hf`` alone: SmolLM2-135M-Instruct,
  offline), prompted delphi-style (:mod:`saelens_lite.explain.prompts`).
* ``openai:URL``: an OpenAI-compatible chat endpoint; the model name comes separately.

Model explainers also serve as the judge of the detection and fuzzing scorers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from saelens_lite.explain.chat import EndpointError, HFChat, OpenAIChat
from saelens_lite.explain.examples import FeatureExamples
from saelens_lite.explain.prompts import EXPLANATION_TAG, explainer_messages, parse_explanation

DEFAULT_HF_MODEL = "smollm2-135m"


def _quote(tok: str) -> str:
    return json.dumps(tok, ensure_ascii=False)


def _common(tokens: list[str], n_examples: int, k: int = 3) -> str:
    counts = Counter(tokens).most_common(k)
    return ", ".join(f"{_quote(t)} ({c}/{n_examples})" for t, c in counts)


class TemplateExplainer:
    """``Fires on "x" (7/10), "y" (2/10); often right after "a" (5/10); boosts "b", "c";
    strongest in: <the top example's text up to two tokens after its token>.`` The counts are
    over the explainer's contexts (each context counts a token once); the snippet gives a
    sentence encoder or a judge the words around the token, which token lists lack."""

    spec = "template"
    chat = None
    snippet_before = 12
    """Tokens of the top example shown before its activating token."""

    def explain(self, ex: FeatureExamples) -> str:
        n = len(ex.explain)
        if n == 0:
            return "Never fires in the cache."
        fired, before = [], []
        for c in ex.explain:
            fired += sorted({c.tokens[i] for i in c.active})
            if c.centre > 0:
                before.append(c.tokens[c.centre - 1])
        parts = [f"Fires on {_common(fired, n)}"]
        if before:
            parts.append(f"often right after {_common(before, n)}")
        if ex.boosted:
            parts.append("boosts " + ", ".join(_quote(t) for t in ex.boosted[:5]))
        top = ex.explain[0]
        snippet = "".join(top.tokens[max(top.centre - self.snippet_before, 0):top.centre + 3])
        parts.append(f"strongest in: {' '.join(snippet.split())}")
        return "; ".join(parts) + "."

    def explain_many(self, examples: list[FeatureExamples]) -> list[str]:
        return [self.explain(ex) for ex in examples]


class ModelExplainer:
    """A chat model reads the highlighted top contexts and answers delphi-style."""

    def __init__(self, chat, spec: str):
        self.chat, self.spec = chat, spec
        self._fallback = TemplateExplainer()

    def explain(self, ex: FeatureExamples) -> str:
        return self.explain_many([ex])[0]

    def explain_many(self, examples: list[FeatureExamples]) -> list[str]:
        """One batched call of the chat model for the features that fired (the others, and
        empty answers, get the template's sentence)."""
        asked = [i for i, ex in enumerate(examples) if ex.explain]
        replies = self.chat.complete_many([explainer_messages(examples[i]) for i in asked],
                                          prefix=EXPLANATION_TAG) if asked else []
        out = [self._fallback.explain(ex) for ex in examples]
        for i, reply in zip(asked, replies):
            out[i] = parse_explanation(reply) or out[i]
        return out


@dataclass(frozen=True)
class ExplainerKind:
    build: Callable[[str, dict], object]
    """(the part after ``kind:``, options) -> explainer."""
    usage: str


def _build_hf(arg: str, opts: dict):
    return ModelExplainer(HFChat(arg or DEFAULT_HF_MODEL), f"hf:{arg or DEFAULT_HF_MODEL}")


def _build_openai(arg: str, opts: dict):
    model = opts.get("openai_model")
    if not arg:
        raise ValueError("--explainer openai:URL needs the endpoint's URL, e.g. "
                         "openai:http://localhost:8000/v1")
    if not model:
        raise ValueError(f"--explainer openai:{arg} needs --openai-model NAME (the model the "
                         "server serves)")
    chat = OpenAIChat(arg, model, timeout=opts.get("timeout", 60.0), retries=opts.get("retries", 3))
    try:
        chat.check()
    except EndpointError as e:
        raise EndpointError(f"--explainer openai:{arg}: the endpoint does not answer ({e}); start "
                            f"the server or choose another of: {choices_text()}") from None
    return ModelExplainer(chat, f"openai:{chat.url}#{model}")


EXPLAINERS: dict[str, ExplainerKind] = {
    "template": ExplainerKind(lambda arg, opts: TemplateExplainer(),
                              "template (no model: tokens it fires on, before, boosts)"),
    "hf": ExplainerKind(_build_hf, f"hf:NAME_OR_PATH (a transformers chat model; 'hf' alone: "
                                   f"{DEFAULT_HF_MODEL})"),
    "openai": ExplainerKind(_build_openai, "openai:URL with --openai-model NAME (an "
                                           "OpenAI-compatible chat endpoint)"),
}


def choices_text() -> str:
    return ", ".join(k.usage for k in EXPLAINERS.values())


def split_spec(spec: str) -> tuple[str, str]:
    """``"hf:org/name"`` -> ``("hf", "org/name")``; raises ValueError naming the valid choices."""
    kind, _, arg = spec.partition(":")
    if kind not in EXPLAINERS or (kind == "template" and arg):
        raise ValueError(f"--explainer {spec!r} is not valid; choose one of: {choices_text()}")
    return kind, arg


def make_explainer(spec: str, **opts):
    """Build the explainer ``spec`` names. ``opts``: ``openai_model``, ``timeout``, ``retries``.
    An unreachable endpoint fails here, before anything is written."""
    kind, arg = split_spec(spec)
    return EXPLAINERS[kind].build(arg, opts)


__all__ = ["EXPLAINERS", "TemplateExplainer", "ModelExplainer", "make_explainer", "split_spec",
           "DEFAULT_HF_MODEL"]
