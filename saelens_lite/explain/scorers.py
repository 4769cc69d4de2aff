"""Scorers of an explanation on held-out examples, registered by name in :data:`SCORERS`.

Definitions after EleutherAI delphi (Paulo et al. 2024, arXiv:2410.13928, Sections 3.2-3.3;
``delphi/scorers/``); the examples are the held-out activating contexts (positives) and the
non-activating contexts (negatives) of :mod:`saelens_lite.explain.examples`, never the
explainer's.

* ``embedding``: cosine similarity of the explanation and each context under all-MiniLM-L6-v2;
  AUROC of positives against negatives.
* ``detection``: a judge reads the explanation and a plain context and says whether the feature
  fires in it; AUROC of P(yes), balanced accuracy of P(yes) > 1/2.
* ``fuzzing``: a judge reads the explanation and a context with some tokens marked ``<<x>>``:
  positives are held-out contexts marked where the feature fires, negatives non-activating
  contexts marked at the positions of a random positive (delphi's default fuzzing); the judge
  says whether the marks are right. AUROC and balanced accuracy as for detection.

Each scorer scores several explanations on the same examples in one call, so an explanation and
its shuffled baseline see identical contexts; ``score_many`` scores a batch of features with one
encoder call (embedding) or one batched judge call (detection, fuzzing), with the same results.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from saelens_lite.explain.examples import FeatureExamples
from saelens_lite.explain.prompts import DETECTION_USER, FUZZING_USER, highlight, judge_messages


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """P(score of a random positive > that of a random negative), ties counting 1/2 (the
    Mann-Whitney U statistic over n_pos * n_neg); None without both classes."""
    p, n = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if len(p) == 0 or len(n) == 0:
        return None
    gt = (p[:, None] > n[None, :]).sum()
    eq = (p[:, None] == n[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(p) * len(n)))


def balanced_accuracy(pos: Sequence[float], neg: Sequence[float], threshold: float = 0.5) -> float | None:
    """(TPR + TNR) / 2 of the decision score > threshold."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(((np.asarray(pos) > threshold).mean() + (np.asarray(neg) <= threshold).mean()) / 2)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


class EmbeddingScorer:
    name = "embedding"
    needs_judge = False

    def __init__(self, encoder):
        self.encoder = encoder

    def score(self, explanations: list[str], ex: FeatureExamples) -> list[dict]:
        return self.score_many([(explanations, ex)])[0]

    def score_many(self, items: list[tuple[list[str], FeatureExamples]]) -> list[list[dict]]:
        texts, spans = [], []
        for explanations, ex in items:
            pos, neg = [c.text for c in ex.heldout], [c.text for c in ex.nonactivating]
            spans.append((len(texts), len(explanations), len(pos), len(neg)))
            texts += list(explanations) + pos + neg
        e_ND = self.encoder.encode(texts)
        out = []
        for a, n_e, n_pos, n_neg in spans:
            q_ED, docs_CD = e_ND[a:a + n_e], e_ND[a + n_e:a + n_e + n_pos + n_neg]
            sim_EC = q_ED @ docs_CD.T
            out.append([{"auroc": _r(auroc(s[:n_pos], s[n_pos:]))} for s in sim_EC])
        return out


class JudgeScorer:
    """Detection and fuzzing: the judge's P(yes) per held-out item."""

    needs_judge = True
    template = ""

    def __init__(self, judge, seed: int = 0):
        self.judge, self.seed = judge, seed

    def items(self, ex: FeatureExamples) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def score(self, explanations: list[str], ex: FeatureExamples) -> list[dict]:
        return self.score_many([(explanations, ex)])[0]

    def score_many(self, items: list[tuple[list[str], FeatureExamples]]) -> list[list[dict]]:
        prompts, spans = [], []
        for explanations, ex in items:
            pos, neg = self.items(ex)
            spans.append([])
            for e in explanations:
                spans[-1].append((len(prompts), len(pos), len(neg)))
                prompts += [judge_messages(self.template, e, t) for t in pos + neg]
        p = self.judge.p_yes(prompts)
        out = []
        for feature_spans in spans:
            out.append([])
            for a, n_pos, n_neg in feature_spans:
                p_pos, p_neg = p[a:a + n_pos], p[a + n_pos:a + n_pos + n_neg]
                out[-1].append({"auroc": _r(auroc(p_pos, p_neg)),
                                "balanced_accuracy": _r(balanced_accuracy(p_pos, p_neg))})
        return out


class DetectionScorer(JudgeScorer):
    name = "detection"
    template = DETECTION_USER

    def items(self, ex: FeatureExamples) -> tuple[list[str], list[str]]:
        return [c.text for c in ex.heldout], [c.text for c in ex.nonactivating]


class FuzzingScorer(JudgeScorer):
    name = "fuzzing"
    template = FUZZING_USER

    def items(self, ex: FeatureExamples) -> tuple[list[str], list[str]]:
        pos = [highlight(c) for c in ex.heldout]
        if not ex.heldout:
            return pos, []
        rng = np.random.default_rng([self.seed, ex.feature, 1])
        neg = []
        for c in ex.nonactivating:
            donor = ex.heldout[int(rng.integers(len(ex.heldout)))]
            # The donor's marks, shifted so its example token lands on this window's.
            shift = c.centre - donor.centre
            marks = [i + shift for i in donor.active if 0 <= i + shift < len(c.tokens)]
            neg.append(highlight(c, marks or [c.centre]))
        return pos, neg


SCORERS = {"embedding": EmbeddingScorer, "detection": DetectionScorer, "fuzzing": FuzzingScorer}


def parse_scorers(spec: str | Sequence[str]) -> list[str]:
    """``"embedding,detection"`` (or a list) -> names, checked against :data:`SCORERS`."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["none"]:
        return []
    if any(s not in SCORERS for s in names) or len(set(names)) != len(names):
        raise ValueError(f"--scorers {','.join(names)!r} is not valid: choose distinct names among "
                         f"{', '.join(SCORERS)} (comma-separated), or 'none'")
    return names


__all__ = ["SCORERS", "EmbeddingScorer", "DetectionScorer", "FuzzingScorer", "auroc",
           "balanced_accuracy", "parse_scorers"]
