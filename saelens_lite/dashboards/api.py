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

from saelens_lite.dashboards.live import LIMITS, LiveModel, RequestError


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EncodeRequest(Body):
    text: Annotated[str, Field(max_length=LIMITS.encode_chars,
                               description="Text to encode; tokens past "
                                           f"{LIMITS.encode_tokens} are dropped.")]


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


def api_router(live: LiveModel | None, worker: ModelWorker) -> APIRouter:
    """The /api routes; without ``live`` only /api/info answers (the model endpoints say 404)."""
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
            return {"encode": False, "interventions": False}
        return {"encode": True, "interventions": True, **live.info(),
                "limits": {k: v for k, v in vars(LIMITS).items() if k != "max_pending"}}

    @router.post("/encode", summary="Features on each token of a text", **post)
    async def encode(req: EncodeRequest) -> dict:
        """``{"tokens": [str], "features": [[[feature, activation], ...] per token]}``, the
        strongest first; one forward of the model to the SAE's hook."""
        return await worker.run(model().encode, req.text)

    return router


__all__ = ["api_router", "ModelWorker", "EncodeRequest", "ErrorBody", "require_json"]
