"""The served dashboard's JSON API: request bodies, their bounds, and the model worker.

Every body is a pydantic model with ``extra="forbid"`` and strict types (``"5"`` is not a
feature index, ``5.0`` neither), so a typo'd or mistyped field is refused, not ignored. Bounds
come from :data:`saelens_lite.dashboards.live.LIMITS`; bounds that depend on the loaded SAE
or on token counts are checked by :class:`~saelens_lite.dashboards.live.LiveModel`. A bad
request is answered ``400 {"error": message, "field": name, "errors": [...]}``.

Model work runs in :class:`ModelWorker`'s single thread, never in the event loop nor in the
thread pool that reads static files, so a long generation cannot delay a page.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from saelens_lite.dashboards.explanations import shard_entry
from saelens_lite.dashboards.live import LIMITS, LiveModel, RequestError


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EncodeRequest(Body):
    text: Annotated[str, Field(max_length=LIMITS.encode_chars,
                               description="Text to encode; tokens past "
                                           f"{LIMITS.encode_tokens} are dropped.")]


class SteerRequest(Body):
    prompt: Annotated[str, Field(min_length=1, max_length=LIMITS.prompt_chars,
                                 description=f"Text to continue (at most {LIMITS.prompt_tokens} tokens).")]
    feature: Annotated[int, Field(ge=0, description="Feature index, below the SAE's feature count.")]
    strength: Annotated[float, Field(ge=-LIMITS.max_strength, le=LIMITS.max_strength, allow_inf_nan=False,
                                     description="alpha of add_direction: in units of the feature's max "
                                                 "activation (/api/info strength_unit says which).")] = 4.0
    max_new_tokens: Annotated[int, Field(ge=1, le=LIMITS.max_new_tokens,
                                         description="Tokens to generate, in each run.")] = 24
    seed: Annotated[int, Field(ge=0, le=LIMITS.max_seed, description="Sampling seed (both runs "
                                                                      "draw the same stream).")] = 0
    temperature: Annotated[float, Field(ge=0, le=LIMITS.max_temperature, allow_inf_nan=False,
                                        description="0: greedy; else sampling.")] = 0.0


class AblateRequest(Body):
    text: Annotated[str, Field(min_length=1, max_length=LIMITS.prompt_chars,
                               description=f"Text to score (2 to {LIMITS.text_tokens} tokens).")]
    feature: Annotated[int, Field(ge=0, description="Feature to zero-ablate at every token.")]


class AttributeRequest(Body):
    prompt: Annotated[str, Field(min_length=1, max_length=LIMITS.prompt_chars,
                                 description=f"Text whose next token is explained (at most "
                                             f"{LIMITS.prompt_tokens} tokens).")]
    target: Annotated[str | None, Field(min_length=1, max_length=LIMITS.token_chars,
                                        description="One token (mind a leading space); null: the "
                                                    "model's own most likely next token.")] = None
    contrast: Annotated[str | None, Field(min_length=1, max_length=LIMITS.token_chars,
                                          description="One token: explain logit(target) - "
                                                      "logit(contrast).")] = None
    top: Annotated[int, Field(ge=1, le=LIMITS.max_top, description="Features returned.")] = 20


class ExplainRequest(Body):
    feature: Annotated[int, Field(ge=0, description="Feature to explain and score (the answer is "
                                                    "kept: asking again returns the same record).")]


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong, naming the field and what is allowed.")
    field: str | None = Field(None, description="The request field at fault (None: the request "
                                                "as a whole).")
    errors: list[dict] = Field([], description="Every problem found: {field, message}.")


ERRORS = {"4XX": {"model": ErrorBody, "description": "Bad request: JSON naming the field"},
          503: {"model": ErrorBody, "description": f"{LIMITS.max_pending} model requests are "
                                                   "already waiting; retry later"}}


class ModelWorker:
    """One thread for all model work (the model is one shared object: see ``LiveModel``), with
    at most ``max_pending`` requests queued or running; more are refused with 503 at once."""

    def __init__(self, max_pending: int = LIMITS.max_pending):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="saelens-model")
        self.max_pending, self.pending = max_pending, 0

    async def run(self, fn, *args):
        if self.pending >= self.max_pending:
            raise RequestError("", f"{self.pending} model requests are waiting; retry later", 503)
        self.pending += 1  # only the event loop's thread touches the counter
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def require_json(request: Request) -> None:
    """Bodies must be sent as JSON: a cross-site form post (no preflight) cannot start model work."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError("Content-Type", f"send the body as JSON with Content-Type: "
                                           f"application/json (got {ctype or 'none'!r})", 415)


def api_router(live: LiveModel | None, worker: ModelWorker, explainer=None) -> APIRouter:
    """The /api routes; without ``live`` only /api/info answers (the model endpoints say 404);
    /api/explain answers with an ``explainer``
    (:class:`~saelens_lite.explain.on_demand.FeatureExplainer`)."""
    router = APIRouter(prefix="/api", responses=ERRORS)
    post = dict(dependencies=[Depends(require_json)])

    def model() -> LiveModel:
        if live is None:
            raise RequestError("", "no model is loaded: start the server with --model and --sae", 404)
        return live

    @router.get("/info", summary="What this server can do")
    async def info() -> dict:
        """``encode`` and ``interventions``: whether the model endpoints answer; with a model,
        its name, hook, the SAE's feature count, the unit of steering strength and the bounds."""
        if live is None:
            return {"encode": False, "interventions": False, "explain": False}
        return {"encode": True, "interventions": True, **live.info(),
                "explain": explainer.info() if explainer is not None else False,
                "limits": {k: v for k, v in vars(LIMITS).items() if k != "max_pending"}}

    @router.post("/encode", summary="Features on each token of a text", **post)
    async def encode(req: EncodeRequest) -> dict:
        """``{"tokens": [str], "features": [[[feature, activation], ...] per token]}``, the
        strongest first; one forward of the model to the SAE's hook."""
        return await worker.run(model().encode, req.text)

    @router.post("/steer", summary="Baseline and steered continuations", **post)
    async def steer(req: SteerRequest) -> dict:
        """The prompt continued by the clean model (``baseline``) and with
        ``strength * max_activation`` times the feature's decoder direction added at every
        position (``steered``); ``generation`` holds both runs' tokens and the bound edit."""
        return await worker.run(model().steer, req.prompt, req.feature, req.strength,
                                req.max_new_tokens, req.seed, req.temperature)

    @router.post("/ablate", summary="Per-token loss change with a feature ablated", **post)
    async def ablate(req: AblateRequest) -> dict:
        """Per token: next-token loss with the SAE spliced in (error term kept), with the feature
        zero-ablated, their ``delta`` (> 0: the feature helped predict that token) and the
        feature's activation there; ``totals`` over the scored tokens."""
        return await worker.run(model().ablate, req.text, req.feature)

    @router.post("/attribute", summary="Which features drive the next token", **post)
    async def attribute(req: AttributeRequest) -> dict:
        """Attribution patching (activation x gradient) of the target's next-token logit at the
        prompt's last token to every (position, feature) and to the SAE's error term; ranked
        ``features``, ``by_feature`` (summed over positions) and ``error_totals``."""
        return await worker.run(model().attribute, req.prompt, req.target, req.contrast, req.top)

    @router.post("/explain", summary="Explain a feature now and score the explanation", **post)
    async def explain(req: ExplainRequest) -> dict:
        """The record ``saelens-lite explain`` writes (docs/explanations.md), as a feature page
        shows it: ``text``, ``explainer``, ``scores`` (each beside the same score of a shuffled
        explanation, another alive feature's made by the same explainer) and ``shuffled``. The
        first request also runs the statistics pass over the cache (seconds to minutes)."""
        if explainer is None:
            raise RequestError("", "explanations on demand are off: start the server with "
                                   "--activations CACHE (and --model, --sae)", 404)
        if req.feature >= model().n_features:
            raise RequestError("feature", f"feature {req.feature} is out of range: the SAE has "
                                          f"{model().n_features} features (0..{model().n_features - 1})")
        record = await worker.run(explainer.explain, req.feature)
        return {"feature": record["feature"], **shard_entry(record)}

    return router


__all__ = ["api_router", "ModelWorker", "EncodeRequest", "SteerRequest", "AblateRequest", "ExplainRequest",
           "AttributeRequest", "ErrorBody", "require_json"]
