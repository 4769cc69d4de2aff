"""The local server (FastAPI on uvicorn): loopback only, only files inside the site, no listings,
many concurrent clients answered, static pages answered while model work runs, and the
live-encoding endpoint with 4xx JSON errors that name the field."""

import http.client
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from saelens_lite.dashboards.live import LiveModel
from saelens_lite.dashboards.server import make_server

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("srv")
    root = tmp_path / "site"
    (root / "data" / "f").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>ok</title>")
    (root / "data" / "f" / "00000.js").write_text("saeShard(0,{});\n")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("TOP SECRET")
    os.symlink(tmp_path / "secret.txt", root / "link_out.txt")
    os.symlink(tmp_path / "outside", root / "linkdir")
    os.symlink(root / "index.html", root / "link_in.html")
    return root


JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(site):
    with make_server(site, port=0) as srv:
        yield srv.server_address[1]


def get(port, path, method="GET", body=None, headers=None):
    """Raw request: the path goes on the wire exactly as written (no client-side normalising)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_serves_files_inside_the_site(server):
    assert get(server, "/") == (200, b"<!doctype html><title>ok</title>")
    assert get(server, "/data/f/00000.js")[0] == 200
    assert get(server, "/link_in.html")[0] == 200  # a symlink that stays inside is fine
    assert get(server, "/index.html?x=1#y")[0] == 200


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/data/../../secret.txt",
    "/data/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt", "/..%5csecret.txt",
    "/%252e%252e/secret.txt", "/link_out.txt", "/linkdir/secret.txt", "/linkdir/", "/data/", "/data",
    "/index.html%00.js", "//etc/passwd", "/%2fetc%2fpasswd", "/nonexistent", "/%ff%fe",
])
def test_rejects_traversal_symlinks_out_and_listings(server, path):
    status, body = get(server, path)
    assert status == 404, (path, status)
    assert b"SECRET" not in body and b"root:" not in body


def test_many_concurrent_clients_are_all_answered_quickly(server):
    """200 requests from 20 threads while 5 idle connections sit open (a slow client must not
    block the rest)."""
    idle = [socket.create_connection(("127.0.0.1", server)) for _ in range(5)]
    paths = ["/", "/data/f/00000.js", "/../secret.txt", "/index.html"] * 50
    t = time.perf_counter()
    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda p: get(server, p)[0], paths))
    finally:
        for s in idle:
            s.close()
    elapsed = time.perf_counter() - t
    assert len(results) == 200
    assert results.count(200) == 150 and results.count(404) == 50
    assert elapsed < 15, f"200 requests took {elapsed:.1f} s"


def test_security_headers_on_pages_api_and_errors_and_no_model_endpoints_without_a_model(server):
    for method, path, body in [("GET", "/", None), ("GET", "/api/info", None), ("GET", "/nope", None),
                               ("POST", "/api/encode", b"{}")]:
        c = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
        c.request(method, path, body, JSON)
        r = c.getresponse()
        r.read()
        c.close()
        assert r.getheader("X-Content-Type-Options") == "nosniff", path
        csp = r.getheader("Content-Security-Policy")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
    assert json.loads(get(server, "/api/info")[1]) == {"encode": False, "interventions": False, "explain": False}
    status, body = get(server, "/api/encode", "POST", b'{"text": "hi"}', JSON)
    assert status == 404 and "--model" in json.loads(body)["error"]


def test_binds_loopback_by_default_and_answers_only_loopback_host_names(site, server):
    from saelens_lite.cli import build_parser

    with make_server(site, port=0) as srv:
        assert srv.server_address[0] == "127.0.0.1"
    assert build_parser().parse_args(["serve", str(site)]).host == "127.0.0.1"
    for host in ("127.0.0.1", f"127.0.0.1:{server}", f"localhost:{server}", "[::1]:80"):
        assert get(server, "/", headers={"Host": host})[0] == 200, host
    # A page whose DNS name was rebound to 127.0.0.1 still sends its own name.
    for host in ("evil.example", f"evil.example:{server}", "127.0.0.1.evil.example"):
        status, body = get(server, "/api/info", headers={"Host": host})
        assert status == 400 and json.loads(body)["field"] == "Host", host


def test_head_requests_and_the_api_reference(server):
    assert get(server, "/", "HEAD") == (200, b"")
    status, body = get(server, "/openapi.json")
    spec = json.loads(body)
    assert status == 200 and "/api/encode" in spec["paths"] and "/api/info" in spec["paths"]
    status, page = get(server, "/docs")
    assert status == 200 and b"/api/encode" in page and b"<script" not in page


@pytest.fixture(scope="module")
def parts():
    from saelens_lite.lm.load import load_model
    from saelens_lite.saes import SAE, SAEConfig

    tiny_llama = load_model("tiny-llama")
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=50, k=4, hook_name=HOOK))
    return tiny_llama, sae


@pytest.fixture(scope="module")
def live_server(site, parts):
    tiny_llama, sae = parts
    with make_server(site, port=0, live=LiveModel(tiny_llama, sae)) as srv:
        yield srv.server_address[1], sae, tiny_llama


def test_encode_endpoint_returns_the_features_on_each_token(live_server):
    from saelens_lite.lm.hooks import capture, resolve_hooks

    port, sae, lm = live_server
    info = json.loads(get(port, "/api/info")[1])
    assert info["encode"] and info["n_features"] == 50 and info["hook"] == HOOK
    status, body = get(port, "/api/encode", "POST", json.dumps({"text": "def f(x): <b>"}).encode(), JSON)
    assert status == 200
    out = json.loads(body)
    ids = lm.tokenizer("def f(x): <b>", return_tensors="pt")
    assert len(out["tokens"]) == len(out["features"]) == ids["input_ids"].shape[1]
    assert "".join(out["tokens"][1:]) == "def f(x): <b>"
    acts = capture(lm.model, dict(ids), resolve_hooks(lm.model, [HOOK]))[HOOK][0]
    with torch.no_grad():
        dense = sae.encode(acts)
    for s, feats in enumerate(out["features"]):
        assert len(feats) == int((dense[s] > 0).sum())
        for f, v in feats:
            assert v == pytest.approx(float(dense[s, f]), rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("body,status,field", [
    (b"not json", 400, None), (b"[1]", 400, None), (b'{"txt": 1}', 400, "text"),
    (b'{"text": 5}', 400, "text"), (b'{"text": "a", "extra": 1}', 400, "extra"),
    (json.dumps({"text": "a" * 20_001}).encode(), 400, "text"), (b"x" * 70_000, 413, "Content-Length"),
])
def test_encode_endpoint_rejects_bad_requests_naming_the_field(live_server, body, status, field):
    port = live_server[0]
    got, out = get(port, "/api/encode", "POST", body, JSON)
    assert got == status
    err = json.loads(out)
    assert err["field"] == field and err["error"]
    if field:
        assert field in err["error"]
    assert get(port, "/")[0] == 200  # still serving


def test_api_bodies_must_be_declared_json(live_server):
    """A cross-site form post (text/plain, no CORS preflight) cannot start model work."""
    port = live_server[0]
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        status, body = get(port, "/api/encode", "POST", b'{"text": "hi"}', headers)
        assert status == 415 and json.loads(body)["field"] == "Content-Type"
    assert get(port, "/api/encode", "POST", b'{"text": "hi"}',
               {"Content-Type": "application/json; charset=utf-8"})[0] == 200


def test_concurrent_api_requests_each_get_their_own_answer(live_server):
    """24 encodes from 8 threads at once equal the same encodes one by one."""
    port = live_server[0]
    texts = [f"text number {i} " * (1 + i % 4) for i in range(24)]

    def post(t):
        status, body = get(port, "/api/encode", "POST", json.dumps({"text": t}).encode(), JSON)
        assert status == 200
        return json.loads(body)

    alone = [post(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(post, texts))
    assert together == alone


class SlowLive(LiveModel):
    """A model whose work takes ``delay`` seconds (a long generation, without its cost)."""

    delay = 1.0

    def encode(self, text):
        with self.lock:
            time.sleep(self.delay)
        return super().encode(text)


def test_static_pages_answer_at_once_while_model_work_runs_and_excess_work_is_refused(site, parts):
    """6 slow model requests at once (4 may wait: 2 get 503 at once) take 4 s; meanwhile every
    static request is answered within 0.5 s."""
    with make_server(site, port=0, live=SlowLive(*parts), max_pending=4) as srv:
        port = srv.server_address[1]
        with ThreadPoolExecutor(6) as pool:
            t0 = time.perf_counter()
            slow = [pool.submit(get, port, "/api/encode", "POST", b'{"text": "hi"}', JSON) for _ in range(6)]
            time.sleep(0.3)
            waits = []
            while not all(f.done() for f in slow):
                t = time.perf_counter()
                assert get(port, "/data/f/00000.js")[0] == 200
                waits.append(time.perf_counter() - t)
                time.sleep(0.05)
            took = time.perf_counter() - t0
        statuses = sorted(f.result()[0] for f in slow)
    assert statuses == [200] * 4 + [503] * 2
    assert took >= 4 * SlowLive.delay
    assert len(waits) > 10 and max(waits) < 0.5, f"static page waited {max(waits):.2f} s"


def test_serve_refuses_a_folder_that_is_not_a_site(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dashboard site"):
        make_server(tmp_path, port=0)


def test_cli_serve_reports_a_busy_port(site, capsys):
    from saelens_lite.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", str(site), "--port", str(s.getsockname()[1])]) == 2
    assert "cannot listen" in capsys.readouterr().err
