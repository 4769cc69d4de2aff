"""Serve a dashboard site on loopback: ``serve(site_dir, port=8000)``.

Only regular files inside ``site_dir`` are served: the decoded path may not hold ``..``, NUL or
backslashes, and its real path (symlinks resolved) must lie inside the site's real path; no
directory listings. A ThreadingHTTPServer with a deep accept queue and a per-connection timeout
keeps it responsive with many clients (a slow client holds one thread, not the server).

With a model and an SAE, ``POST /api/encode {"text": ...}`` returns the tokens of the text and,
per token, the features that fire on it: ``{"tokens": [str], "features": [[[f, act], ...], ...]}``
(strongest first). ``GET /api/info`` says whether that endpoint is on.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
"""Largest accepted POST body in bytes."""
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
}


class LiveEncoder:
    """Text -> tokens and the features active on each (one forward to the SAE's hook)."""

    def __init__(self, lm, sae, hook: str | None = None, *, max_tokens: int = 512, top: int = 10):
        from saelens_lite.hooks import resolve_hooks

        self.lm, self.sae = lm, sae.eval()
        self.hook = resolve_hooks(lm.model, [hook or sae.cfg.hook_name])[0]
        self.max_tokens, self.top = max_tokens, top
        self._lock = threading.Lock()  # one forward at a time: torch already uses every core

    @torch.no_grad()
    def encode(self, text: str) -> dict:
        from saelens_lite.hooks import capture

        tok = self.lm.tokenizer
        enc = tok(text, return_tensors="pt", truncation=True, max_length=self.max_tokens)
        ids = enc["input_ids"]
        with self._lock:
            acts = capture(self.lm.model, dict(enc), [self.hook], stop_early=True)[self.hook.name][0]
            vals_SK, idx_SK = self.sae.encode_sparse(acts.to(self.sae.W_enc.dtype))
        k = min(self.top, vals_SK.shape[-1])
        vals_SK, order = vals_SK.topk(k, dim=-1)
        idx_SK = idx_SK.gather(-1, order)
        strings = tok.batch_decode([[int(i)] for i in ids[0]], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
        feats = [[[int(f), round(float(v), 4)] for f, v in zip(fi, vi) if v > 0]
                 for fi, vi in zip(idx_SK.tolist(), vals_SK.tolist())]
        return {"tokens": strings, "features": feats}


class SiteHandler(SimpleHTTPRequestHandler):
    """Static files of one site folder plus the small JSON API."""

    server_version = "saelens-lite"
    sys_version = ""
    timeout = 20  # seconds a connection may sit idle mid-request

    def __init__(self, *args, root: str, encoder: LiveEncoder | None = None, **kwargs):
        self.root = root  # real path of the site folder
        self.encoder = encoder
        super().__init__(*args, directory=root, **kwargs)

    # -- path safety
    def safe_path(self, url_path: str) -> str | None:
        """The real file path for a URL path, or None if it is not a file inside the site."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path, errors="strict")
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

    def send_head(self):
        try:
            full = self.safe_path(self.path)
        except (UnicodeDecodeError, ValueError):
            full = None
        if full is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not found")
            return None
        try:
            f = open(full, "rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "not found")
            return None
        try:
            size = os.fstat(f.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", self.guess_type(full))
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            return f
        except BaseException:
            f.close()
            raise

    def list_directory(self, path):  # never list folders
        self.send_error(HTTPStatus.NOT_FOUND, "not found")
        return None

    def end_headers(self):
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        super().end_headers()

    # -- API
    def _json(self, status: int, obj) -> None:
        body = json.dumps(obj, ensure_ascii=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if urllib.parse.urlsplit(self.path).path == "/api/info":
            self._json(200, {"encode": self.encoder is not None})
            return
        super().do_GET()

    def do_POST(self):
        if urllib.parse.urlsplit(self.path).path != "/api/encode":
            self._json(404, {"error": "not found"})
            return
        if self.encoder is None:
            self._json(404, {"error": "live encoding is off: start the server with --model and --sae"})
            return
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._json(411, {"error": "Content-Length required"})
            return
        if not 0 <= n <= MAX_BODY:
            self._json(413, {"error": f"body over {MAX_BODY} bytes"})
            return
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
            text = req["text"]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._json(400, {"error": 'expected JSON {"text": "..."}'})
            return
        if not text:
            self._json(200, {"tokens": [], "features": []})
            return
        try:
            self._json(200, self.encoder.encode(text))
        except Exception as e:  # keep serving; report the failure to this client only
            log.exception("encode failed")
            self._json(500, {"error": f"encode failed: {type(e).__name__}"})

    def log_message(self, format, *args):
        log.debug("%s - %s", self.address_string(), format % args)


class SiteServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connecting at once wait in the kernel, not refused


def make_server(site_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000,
                encoder: LiveEncoder | None = None) -> SiteServer:
    """A server bound to (host, port) (port 0: any free port; see ``server_address``)."""
    root = os.path.realpath(site_dir)
    if not os.path.isfile(os.path.join(root, "index.html")):
        raise FileNotFoundError(f"{site_dir} is not a dashboard site (no index.html); build one with "
                                "saelens-lite dashboard")
    return SiteServer((host, port), partial(SiteHandler, root=root, encoder=encoder))


def serve(site_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000,
          model=None, sae=None) -> None:
    """Serve forever (Ctrl-C stops). ``model`` (LoadedModel or name) and ``sae`` (SAE or folder)
    together turn on the live-encoding box."""
    encoder = None
    if (model is None) != (sae is None):
        raise ValueError("live encoding needs both --model and --sae")
    if model is not None:
        from saelens_lite.models import LoadedModel, load_model
        from saelens_lite.saes import SAE

        lm = model if isinstance(model, LoadedModel) else load_model(model)
        encoder = LiveEncoder(lm, SAE.load(sae) if isinstance(sae, (str, os.PathLike)) else sae)
    httpd = make_server(site_dir, host=host, port=port, encoder=encoder)
    h, p = httpd.server_address[:2]
    print(f"serving {Path(site_dir).resolve()} at http://{h}:{p}/  (Ctrl-C to stop)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


__all__ = ["serve", "make_server", "LiveEncoder", "SiteHandler", "SiteServer"]
