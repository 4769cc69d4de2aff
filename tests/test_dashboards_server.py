"""The local server: only files inside the site, no listings, many concurrent clients answered,
and the live-encoding endpoint."""

import http.client
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from saelens_lite.dashboards.server import LiveEncoder, make_server

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


def start(site, encoder=None):
    httpd = make_server(site, port=0, encoder=encoder)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def server(site):
    httpd = start(site)
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def get(port, path, method="GET", body=None, headers=None):
    """Raw request: the path goes on the wire exactly as written (no client-side normalising)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
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


def test_security_headers_and_no_listing_of_api_without_encoder(server):
    c = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    c.request("GET", "/")
    r = c.getresponse()
    r.read()
    assert r.getheader("X-Content-Type-Options") == "nosniff"
    assert "script-src 'self'" in r.getheader("Content-Security-Policy")
    c.close()
    assert json.loads(get(server, "/api/info")[1]) == {"encode": False}
    assert get(server, "/api/encode", "POST", b'{"text": "hi"}')[0] == 404


@pytest.fixture(scope="module")
def live_server(site):
    from saelens_lite.models import load_model
    from saelens_lite.saes import SAE, SAEConfig

    tiny_llama = load_model("tiny-llama")
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig(architecture="topk", d_in=64, d_sae=50, k=4, hook_name=HOOK))
    httpd = start(site, LiveEncoder(tiny_llama, sae))
    yield httpd.server_address[1], sae, tiny_llama
    httpd.shutdown()
    httpd.server_close()


def test_encode_endpoint_returns_the_features_on_each_token(live_server):
    from saelens_lite.hooks import capture, resolve_hooks

    port, sae, lm = live_server
    assert json.loads(get(port, "/api/info")[1]) == {"encode": True}
    status, body = get(port, "/api/encode", "POST", json.dumps({"text": "def f(x): <b>"}).encode(),
                       {"Content-Type": "application/json"})
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


@pytest.mark.parametrize("body,status", [
    (b"not json", 400), (b'{"txt": 1}', 400), (b'{"text": 5}', 400), (b"x" * 70_000, 413),
])
def test_encode_endpoint_rejects_bad_requests(live_server, body, status):
    port = live_server[0]
    assert get(port, "/api/encode", "POST", body)[0] == status
    assert get(port, "/")[0] == 200  # still serving


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
