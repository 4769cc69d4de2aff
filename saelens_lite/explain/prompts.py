"""Prompt text for the model explainer and the judges, and the ``<<token>>`` highlighting.

Follows the shape of EleutherAI delphi's default explainer and its detection / fuzzing scorers
(Paulo et al. 2024, "Automatically Interpreting Millions of Features in Large Language Models",
arXiv:2410.13928; github.com/EleutherAI/delphi, ``delphi/explainers/default/prompts.py`` and
``delphi/scorers/classifier/``): activating tokens between ``<<`` and ``>>``, a run of consecutive
activating tokens inside one pair, the answer on a last line after ``[EXPLANATION]:``. The wording
here is shorter than delphi's so that a 135M-parameter model keeps it in view, and a local model's
answer starts with that tag already written (see :class:`~saelens_lite.explain.chat.HFChat`);
docs/explanations.md prints every prompt in full.
"""

from __future__ import annotations

from collections.abc import Sequence

from saelens_lite.explain.examples import Context, FeatureExamples

Messages = list[dict[str, str]]

EXPLAINER_SYSTEM = (
    "You are a meticulous researcher looking for patterns in text. You will see text examples in "
    "which some tokens are marked between delimiters like <<this>>; a run of consecutive marked "
    "tokens is inside one pair <<like this>>. Find what the marked tokens, and the words around "
    "them, have in common.\n"
    "- Describe the pattern in one short phrase (at most 15 words).\n"
    "- Do not mention the << >> markers. Do not list alternatives.\n"
    "- The last line of your answer must be: [EXPLANATION]: <your phrase>"
)

JUDGE_SYSTEM = ("You check descriptions of a language model's features against text. "
                "Answer with one word: yes or no.")

DETECTION_USER = ("Feature description: {explanation}\n\nText: {text}\n\n"
                  "Does the feature described fire somewhere in this text? Answer yes or no.")

FUZZING_USER = ("Feature description: {explanation}\n\nText: {text}\n\n"
                "Some tokens are marked between << and >>. Are the marked tokens exactly the ones "
                "the description is about? Answer yes or no.")

EXPLANATION_TAG = "[EXPLANATION]:"


def highlight(ctx: Context, positions: Sequence[int] | None = None) -> str:
    """The window's text with tokens ``positions`` (default: where the feature fires) between
    ``<<`` and ``>>``; consecutive marked tokens share one pair, as in delphi."""
    marked = set(ctx.active if positions is None else positions)
    out, open_ = [], False
    for i, tok in enumerate(ctx.tokens):
        if i in marked and not open_:
            out.append("<<")
            open_ = True
        elif i not in marked and open_:
            out.append(">>")
            open_ = False
        out.append(tok)
    if open_:
        out.append(">>")
    return "".join(out).replace("\n", " ")


def explainer_messages(ex: FeatureExamples) -> Messages:
    """The explainer's chat: the instructions, then the feature's highlighted contexts. delphi
    also shows worked examples; SmolLM2-135M copied the worked example's answer for all of 40
    demo features (docs/explanations.md), so there are none here."""
    shown = "\n".join(f"Example {i + 1}: {highlight(c).strip()}" for i, c in enumerate(ex.explain))
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": shown}]


def judge_messages(template: str, explanation: str, text: str) -> Messages:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": template.format(explanation=explanation, text=text.strip())}]


def parse_explanation(reply: str, max_chars: int = 200) -> str:
    """The first non-empty line after the last ``[EXPLANATION]:`` (else in the reply) that is
    not a lead-in ending in ":" ("The pattern is:", which small models write before the answer);
    whitespace collapsed, a list marker and quotes around it stripped, cut at ``max_chars``."""
    if EXPLANATION_TAG in reply:
        reply = reply.rsplit(EXPLANATION_TAG, 1)[1]
    lines = [line for line in reply.splitlines() if line.strip()]
    text = next((line for line in lines if not line.rstrip().endswith(":")), lines[0] if lines else "")
    text = " ".join(text.split()).lstrip("-*• ").strip(" \"'")  # list markers, quotes
    return text[:max_chars]


__all__ = ["highlight", "explainer_messages", "judge_messages", "parse_explanation",
           "DETECTION_USER", "FUZZING_USER", "Messages"]
