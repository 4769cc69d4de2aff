"""Serve a dashboard site on loopback: ``serve(site_dir, port=8000, model=..., sae=...)``.

A FastAPI app on uvicorn (one asyncio event loop; model work in a worker thread of its own,
:mod:`saelens_lite.dashboards.api`), so many clients are answered at once and a long
generation never holds up a static page.

Guarantees, each tested in ``tests/dashboards/test_dashboards_server.py`` (the intervention endpoints in
``tests/dashboards/test_server_interventions.py``, the pages in ``tests/dashboards/test_dashboards_browser.py``):

* loopback by default, and on a loopback address only requests whose ``Host`` names loopback
  are answered (a DNS-rebinding page cannot reach the API);
* only regular files inside ``site_dir``: the raw URL path is percent-decoded once, may not
  hold ``..``, NUL or backslashes, and its real path (symlinks resolved) must lie inside the
  site's real path; no directory listings;
* every response carries a Content-Security-Policy without inline scripts, and the page puts
  token text into the DOM as text only (``dashboards/app.js``);
* bad API requests get a 4xx JSON error that names the field (:mod:`.api`).

The API is described at ``/docs`` (rendered here from ``/openapi.json``: the stock Swagger
page loads scripts from a CDN, which this CSP and an offline machine refuse).
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

from saelens_lite.dashboards.api import ModelWorker, api_router
from saelens_lite.dashboards.graph_api import graph_router
from saelens_lite.dashboards.graphs import GRAPHS_SUBDIR, is_graph_site
from saelens_lite.dashboards.live import LIMITS, LiveModel, RequestError
from saelens_lite.interventions import load_site_stats

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
"""Largest accepted request body in bytes (413 beyond)."""
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]"}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Site:
    """The files of one site folder, looked up safely (module docstring)."""

    def __init__(self, site_dir: str | os.PathLike):
        self.root = os.path.realpath(site_dir)
        self.has_index = os.path.isfile(os.path.join(self.root, "index.html"))
        if not (self.has_index or is_graph_site(self.root)):
            raise FileNotFoundError(f"{site_dir} is not a dashboard site (no index.html, no graphs/index.html); "
                                    "build one with saelens-lite dashboard")

    def file_for(self, raw_path: bytes) -> str | None:
        """The real path of the file a raw URL path names, or None if it is not a file inside."""
        try:
            path = urllib.parse.unquote(raw_path.decode("ascii"), errors="strict")
        except (UnicodeDecodeError, ValueError):
            return None
        if "\x00" in path or "\\" in path or not path.startswith("/"):
            return None
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return None
        full = os.path.realpath(os.path.join(self.root, *parts))
        if os.path.isdir(full):
            full = os.path.realpath(os.path.join(full, "index.html"))
        if os.path.commonpath([self.root, full]) != self.root:
            return None  # a symlink out of the site
        return full if os.path.isfile(full) else None


class Guard:
    """ASGI middleware around the whole app (so FastAPI's own 413 and 500 answers pass through
    it too): the security headers on every response; on a loopback address, a
    ``Host`` check (a page on another origin that rebinds its DNS name to 127.0.0.1 sends its
    own name, and is refused); a JSON 413 for a declared body over ``MAX_BODY`` (FastAPI's
    ``max_body_size`` still stops a chunked one, in plain text)."""

    def __init__(self, app, allowed_hosts: set[str] | None):
        self.app, self.allowed_hosts = app, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers[k] = v
            await send(message)

        headers = dict(scope["headers"])
        resp = None
        if self.allowed_hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed_hosts:
                resp = error_response(400, f"Host {host!r} is not this loopback server's", "Host")
        length = headers.get(b"content-length", b"0")
        if resp is None and (not length.isdigit() or int(length) > MAX_BODY):
            resp = error_response(413, f"Content-Length: the body is over {MAX_BODY} bytes", "Content-Length")
        if resp is not None:
            return await resp(scope, receive, send_secured)
        await self.app(scope, receive, send_secured)


def error_response(status: int, message: str, field: str | None = None,
                   errors: list[dict] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field,
                         "errors": errors or [{"field": field, "message": message}]},
                        status_code=status, headers={"Cache-Control": "no-store"})


def _validation_error(_request, exc: RequestValidationError) -> JSONResponse:
    """400 naming each field (pydantic's message, never the input: it may be NaN or huge)."""
    errors = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":  # loc is (body, character offset)
            errors.append({"field": None, "message": "not valid JSON "
                                                     f"({e.get('ctx', {}).get('error', 'decode error')})"})
            continue
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        errors.append({"field": ".".join(loc) or None, "message": e.get("msg", "invalid")})
    first = errors[0] if errors else {"field": None, "message": "invalid request"}
    where = f"{first['field']}: " if first["field"] else "body: "
    return error_response(400, where + first["message"], first["field"], errors)


def _request_error(_request, exc: RequestError) -> JSONResponse:
    return error_response(exc.status, str(exc), exc.field or None)


def _http_error(_request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail))


def _internal_error(_request, exc: Exception) -> JSONResponse:
    """Report a failure to its client only (the name of the error, not its text); keep serving."""
    log.error("request failed", exc_info=exc)
    return error_response(500, f"the server failed: {type(exc).__name__} (details in its log)")


def make_app(site_dir: str | os.PathLike, live: LiveModel | None = None, *,
             max_pending: int = LIMITS.max_pending, explainer=None) -> FastAPI:
    """The app: ``/api/*`` (:mod:`.api`, :mod:`.graph_api`), ``/docs``, ``/openapi.json``, then the
    site's files (``/`` of a site holding only graph pages redirects to them).
    :class:`SiteServer` serves it inside :class:`Guard`."""
    site = Site(site_dir)
    worker = ModelWorker(max_pending)
    app = FastAPI(title="saelens-lite dashboard API", docs_url=None, redoc_url=None,
                  max_body_size=MAX_BODY,
                  description="Live encoding and interventions on the served dashboard's SAE.")
    app.state.worker = worker
    app.state.explainer = explainer
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(api_router(live, worker, explainer))
    app.include_router(graph_router(site.root))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi()))

    @app.api_route("/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static(request: Request):
        full = site.file_for(request.scope.get("raw_path") or request.url.path.encode())
        if full is None and request.url.path == "/" and not site.has_index:  # a site of graph pages only
            return RedirectResponse(f"/{GRAPHS_SUBDIR}/index.html")
        if full is None:
            return error_response(404, "not found")
        return FileResponse(full, headers={"Cache-Control": "no-cache"})

    return app


def docs_page(spec: dict) -> str:
    """The API reference as static HTML (no script), every string escaped; double-backquoted
    words of the docstrings set as code."""
    def e(text) -> str:
        return re.sub(r"``(.+?)``", r"<code>\1</code>", html.escape(str(text)))

    schemas = spec.get("components", {}).get("schemas", {})
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>{e(spec['info']['title'])}</title><link rel='icon' href='data:,'>",
           "<link rel='stylesheet' href='/assets/style.css'></head><body><main class='apidocs'>",
           f"<h1>{e(spec['info']['title'])}</h1><p class='muted'>{e(spec['info'].get('description', ''))} "
           "Machine-readable: <a href='/openapi.json'>/openapi.json</a>.</p>"]
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            out.append(f"<h3><code>{e(method.upper())} {e(path)}</code> {e(op.get('summary', ''))}</h3>")
            out.append(f"<p>{e(op.get('description', ''))}</p>")
            ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                   .get("schema", {}).get("$ref", ""))
            body = schemas.get(ref.rsplit("/", 1)[-1]) if ref else None
            if body:
                out.append("<table class='logits'><tr><th>field</th><th>type and bounds</th>"
                           "<th>about</th></tr>")
                for name, p in body.get("properties", {}).items():
                    req = " (required)" if name in body.get("required", []) else ""
                    out.append(f"<tr><td><code>{e(name)}</code>{req}</td><td>{e(_bounds(p))}</td>"
                               f"<td>{e(p.get('description', ''))}</td></tr>")
                out.append("</table>")
    out.append("</main></body></html>")
    return "\n".join(out)


def _bounds(p: dict) -> str:
    alts = p.get("anyOf", [p])
    kinds = [a.get("type", "") for a in alts]
    p = {**{k: v for a in alts for k, v in a.items()}, **p}  # an optional field's bounds sit in anyOf
    words = ["|".join(k for k in kinds if k)]
    for key, sym in (("minimum", ">="), ("maximum", "<="), ("exclusiveMinimum", ">"),
                     ("minLength", "chars >="), ("maxLength", "chars <=")):
        if key in p:
            v = p[key]
            words.append(f"{sym} {int(v) if isinstance(v, float) and v.is_integer() else v}")
    if "default" in p:
        words.append(f"default {json.dumps(p['default'])}")
    return ", ".join(w for w in words if w)


class SiteServer:
    """uvicorn serving an app on a socket bound at construction, so a busy port fails at once
    and port 0 is resolved before anything is printed (``server_address``, ``url``). On a
    loopback host only loopback ``Host`` names are answered (:class:`Guard`)."""

    def __init__(self, app: FastAPI, host: str, port: int):
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self.socket = socket.socket(family, kind, proto)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(addr)
            self.socket.listen(2048)  # many clients connecting at once wait in the kernel
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        self.app = app
        allowed = (LOOPBACK_NAMES | {host.lower(), f"[{host.lower()}]"}) if is_loopback(host) else None
        self.server = uvicorn.Server(uvicorn.Config(
            Guard(app, allowed), lifespan="off", log_config=None, log_level="warning", access_log=False,
            server_header=False, http="h11", ws="none", loop="asyncio", timeout_graceful_shutdown=5))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        h, p = self.server_address
        return f"http://{f'[{h}]' if ':' in h else h}:{p}/"

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop()`` or, in the main thread, Ctrl-C / SIGTERM."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.app.state.worker.close()
            if self.app.state.explainer is not None:
                self.app.state.explainer.close()  # its temporary code table
            self.socket.close()

    def start(self, timeout: float = 30.0) -> SiteServer:
        """Serve in a background thread; returns once the server accepts requests."""
        self._thread = threading.Thread(target=self.serve_forever, name="saelens-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.socket.close()

    def __enter__(self) -> SiteServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def make_server(site_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000,
                live: LiveModel | None = None, max_pending: int = LIMITS.max_pending,
                explainer=None) -> SiteServer:
    """A server bound to (host, port) (port 0: any free port), not yet serving: ``start()``
    (background) or ``serve_forever()``. ``explainer`` (a FeatureExplainer, with ``live``)
    turns on /api/explain."""
    if explainer is not None and live is None:
        raise ValueError("explanations on demand need the live model (--model and --sae)")
    return SiteServer(make_app(site_dir, live, max_pending=max_pending, explainer=explainer), host, port)


def load_explainer(site_dir: str | os.PathLike, live: LiveModel, activations, *, out=None,
                   explainer: str = "template", scorers: str = "embedding", sae_path=None, **opts):
    """A FeatureExplainer on the live model's SAE over ``activations`` (a cache folder), its
    records kept in ``out`` (default ``SITE_DIR/live-explanations``)."""
    from saelens_lite.cache import ActivationCache
    from saelens_lite.explain.on_demand import FeatureExplainer

    cache = ActivationCache(activations)
    out = Path(site_dir) / "live-explanations" if out is None else out
    return FeatureExplainer(live.sae, cache, live.lm, explainer=explainer, scorers=scorers, out=out,
                            sae_path=sae_path, **opts)


def load_live(site_dir: str | os.PathLike, model, sae) -> LiveModel:
    """A LiveModel for ``model`` (LoadedModel or name) and ``sae`` (SAE or folder), with the
    site's max activations (steering strength's unit) when the site has statistics."""
    from saelens_lite.lm.load import LoadedModel, load_model
    from saelens_lite.saes import SAE
    from saelens_lite.saes.base import require_sparse_coder

    sae = SAE.load(sae) if isinstance(sae, (str, os.PathLike)) else sae
    require_sparse_coder(sae, "the live panels")
    try:
        stats = load_site_stats(site_dir)
    except FileNotFoundError:
        log.warning("%s has no feature statistics: steering strength is in units of the unit-norm "
                    "decoder direction", site_dir)
        stats = None
    if stats is not None and len(stats.max_F) != sae.cfg.d_sae:
        raise ValueError(f"the site {site_dir} describes {len(stats.max_F)} features but the SAE has "
                         f"d_sae={sae.cfg.d_sae}: serve the site with the SAE it was built from")
    if stats is not None and stats.hook != sae.cfg.hook_name:
        log.warning("the site was built at %s, the SAE reads %s", stats.hook, sae.cfg.hook_name)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    return LiveModel(lm, sae, max_F=None if stats is None else stats.max_F)


def serve(site_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000,
          model=None, sae=None, activations=None, explain_out=None, explainer: str = "template",
          scorers: str = "embedding", **explain_opts) -> None:
    """Serve until Ctrl-C. ``model`` (LoadedModel or name) and ``sae`` (SAE or folder) together
    turn on the API's model endpoints and the pages' live panels; ``activations`` (a cache
    folder) also the "Explain this feature" button (``explainer``, ``scorers``: as for
    ``saelens-lite explain``; ``explain_opts``: ``openai_model``, ``judge``, ...)."""
    if (model is None) != (sae is None):
        raise ValueError("the live panels need both --model and --sae")
    if activations is not None and model is None:
        raise ValueError("--activations (explanations on demand) needs --model and --sae too")
    live = load_live(site_dir, model, sae) if model is not None else None
    expl = None
    if activations is not None:
        sae_path = str(Path(sae).resolve()) if isinstance(sae, (str, os.PathLike)) else None
        expl = load_explainer(site_dir, live, activations, out=explain_out, explainer=explainer,
                              scorers=scorers, sae_path=sae_path, **explain_opts)
    server = make_server(site_dir, host=host, port=port, live=live, explainer=expl)
    print(f"serving {Path(site_dir).resolve()} at {server.url}  (Ctrl-C to stop)"
          + (f"; API reference at {server.url}docs" if live else ""), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


__all__ = ["serve", "make_server", "make_app", "load_live", "load_explainer", "SiteServer", "Site", "docs_page"]
