"""Real nginx and Caddy, with a throwaway CA, in front of a TLS stand-in for Modal's ingress.

client --TLS api.example.test--> nginx|Caddy --TLS ws--embeddings.modal.test--> ModalIngress
-> the library's app (origin lock on) serving the example Embedder. Everything on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.edge_support import origin
from tests.edge_support.procs import free_port, running, wait_for
from tests.edge_support.tls import Certs, make_ca, make_cert

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
EDGE_READ_TIMEOUT = 2  # seconds; the generated default (180) is for Modal's 150 s limit
EDGE_MAX_BODY = 64 * 1024  # below the app's own limit, so a 413 can only come from the edge
WRONG_CA_HOST = "wrongca.example.test"


class Setup:
    def __init__(self, tmp: Path, ca: Certs, origin_port: int) -> None:
        self.tmp, self.ca, self.origin_port = tmp, ca, origin_port
        context = ssl.create_default_context(cafile=str(ca.cert))
        self.client = httpx.Client(verify=context, timeout=10.0)

    def origin(self, method: str, path: str, headers: dict[str, str], **kw: object):
        """Straight to the stand-in for Modal's ingress, skipping the edge."""
        return self.client.request(
            method,
            f"https://127.0.0.1:{self.origin_port}{path}",
            headers={"host": origin.ORIGIN_HOST, **headers},
            extensions={"sni_hostname": origin.ORIGIN_HOST},
            **kw,  # type: ignore[arg-type]
        )

    def attempts(self, key: str) -> int:
        response = self.origin(
            "GET",
            "/attempts",
            _token(edge=True),
            params={"key": key},
        )
        response.raise_for_status()
        count: int = response.json()["count"]
        return count


def _token(*, edge: bool) -> dict[str, str]:
    headers = {"modal-key": origin.MODAL_KEY, "modal-secret": origin.MODAL_SECRET}
    if edge:
        headers["x-mfk-edge-secret"] = origin.EDGE_SECRET
    return headers


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("edge")
    ca = make_ca(tmp / "pki", "test-ca")
    origin_cert = make_cert(tmp / "pki", ca, origin.ORIGIN_HOST)
    port = free_port()
    argv = [sys.executable, "-m", "tests.edge_support.origin", "--port", str(port)]
    argv += ["--cert", str(origin_cert.cert), "--key", str(origin_cert.key)]
    env = {origin.EDGE_SECRET_ENV: origin.EDGE_SECRET, "HF_HUB_OFFLINE": "1"}
    log = tmp / "origin.log"
    with running(argv, log, env=env, cwd=ROOT) as proc:
        s = Setup(tmp, ca, port)
        wait_for(
            lambda: s.origin("GET", "/readyz", _token(edge=True)).status_code == 200,
            120,
            "origin",
            log,
            proc,
        )
        yield s
        s.client.close()


def _generate(
    edge: str, setup: Setup, domain: str, out: Path, ca_bundle: Path, listen: str
) -> None:
    certs = make_cert(setup.tmp / "pki", setup.ca, domain)
    env = {
        **os.environ,
        "MFK_MODAL_KEY": origin.MODAL_KEY,
        "MFK_MODAL_SECRET": origin.MODAL_SECRET,
        "MFK_EDGE_SECRET": origin.EDGE_SECRET,
    }
    argv = [sys.executable, "-m", "modal_fastapi_kit.cli", "edge", edge, "--domain", domain]
    argv += ["--origin", f"https://{origin.ORIGIN_HOST}", "--out", str(out), "--listen", listen]
    argv += ["--cert", str(certs.cert), "--key", str(certs.key), "--ca-bundle", str(ca_bundle)]
    # Two addresses, as a name with several A records would give: a retry has somewhere to go.
    address = f"127.0.0.1:{setup.origin_port}"
    argv += ["--origin-address", address, "--origin-address", address]
    argv += ["--read-timeout", str(EDGE_READ_TIMEOUT), "--max-body-bytes", str(EDGE_MAX_BODY)]
    subprocess.run(argv, check=True, env=env, cwd=ROOT, timeout=60, capture_output=True)


def _nginx(setup: Setup, port: int) -> tuple[list[str], Path, dict[str, str]]:
    run = setup.tmp / "nginx"
    sites = [run / "site", run / "wrongca"]
    _generate("nginx", setup, origin.PUBLIC_HOST, sites[0], setup.ca.cert, f"127.0.0.1:{port}")
    other_ca = make_ca(setup.tmp / "pki-other", "other-ca")
    _generate("nginx", setup, WRONG_CA_HOST, sites[1], other_ca.cert, f"127.0.0.1:{port}")
    temp = "\n".join(
        f"  {name}_temp_path {run / name};" for name in ("client_body", "proxy", "fastcgi")
    )
    temp += f"\n  uwsgi_temp_path {run / 'uwsgi'};\n  scgi_temp_path {run / 'scgi'};"
    includes = "\n".join(f"  include {site}/{site_domain}.conf;" for site, site_domain in zip(
        sites, (origin.PUBLIC_HOST, WRONG_CA_HOST), strict=True
    ))  # fmt: skip
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = run / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {run / 'nginx.pid'};\n"
        f"error_log {run / 'error.log'} info;\nevents {{ worker_connections 128; }}\n"
        f"http {{\n  access_log {run / 'access.log'};\n{temp}\n{includes}\n}}\n"
    )
    argv = ["nginx", "-p", str(run), "-c", str(conf), "-e", str(run / "error.log")]
    subprocess.run([*argv, "-t"], check=True, timeout=30, capture_output=True)
    return argv, run / "error.log", {}


def _caddy(setup: Setup, port: int) -> tuple[list[str], Path, dict[str, str]]:
    run = setup.tmp / "caddy"
    sites = [run / "site", run / "wrongca"]
    listen = f"127.0.0.1:{port}"
    _generate("caddy", setup, origin.PUBLIC_HOST, sites[0], setup.ca.cert, listen)
    other_ca = make_ca(setup.tmp / "pki-other-caddy", "other-ca")
    _generate("caddy", setup, WRONG_CA_HOST, sites[1], other_ca.cert, listen)
    caddyfile = run / "Caddyfile"
    caddyfile.write_text(
        "{\n\tadmin off\n\tauto_https disable_redirects\n"
        f"\tskip_install_trust\n\thttp_port {free_port()}\n\thttps_port {port}\n"
        f"\tstorage file_system {run / 'data'}\n}}\n"
        f"import {sites[0]}/{origin.PUBLIC_HOST}.caddy\n"
        f"import {sites[1]}/{WRONG_CA_HOST}.caddy\n"
    )
    env = {"HOME": str(run), "XDG_DATA_HOME": str(run / "data"), "XDG_CONFIG_HOME": str(run)}
    argv = ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
    argv += ["--envfile", str(sites[0] / "edge.env")]
    return argv, run / "caddy.log", env


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def edge(request: pytest.FixtureRequest, setup: Setup) -> Iterator[tuple[str, int]]:
    name = request.param
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed: make system-deps (apt-get install nginx caddy)")
    port = free_port()
    argv, log, env = (_nginx if name == "nginx" else _caddy)(setup, port)
    with running(argv, log.with_suffix(".out"), env=env) as proc:
        wait_for(
            lambda: _get(setup, port, "/healthz").status_code == 200,
            30,
            name,
            log.with_suffix(".out"),
            proc,
        )
        yield name, port


def _get(setup: Setup, port: int, path: str, host: str = origin.PUBLIC_HOST, **kw: object):
    return setup.client.request(
        str(kw.pop("method", "GET")),
        f"https://127.0.0.1:{port}{path}",
        headers={"host": f"{host}:{port}", **kw.pop("headers", {})},  # type: ignore[dict-item]
        extensions={"sni_hostname": host},
        **kw,  # type: ignore[arg-type]
    )


def test_embedding_through_the_edge(setup: Setup, edge: tuple[str, int]) -> None:
    _, port = edge
    response = _get(setup, port, "/embed", method="POST", json={"text": "hello world"})
    assert response.status_code == 200, response.text
    vector = response.json()["embedding"]
    assert len(vector) == 384
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_embedding_with_curl_resolve(setup: Setup, edge: tuple[str, int]) -> None:
    _, port = edge
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "20",
         "--resolve", f"{origin.PUBLIC_HOST}:{port}:127.0.0.1", "--cacert", str(setup.ca.cert),
         "--header", "content-type: application/json", "--data", '{"text": "hello world"}',
         "--write-out", "\\n%{http_code}", f"https://{origin.PUBLIC_HOST}:{port}/embed"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    body, _, status = done.stdout.rpartition("\n")
    assert status == "200", done.stdout + done.stderr
    assert len(json.loads(body)["embedding"]) == 384


def test_spoofed_headers_do_not_get_through(setup: Setup, edge: tuple[str, int]) -> None:
    _, port = edge
    spoofed = {
        "modal-key": "wk-spoofed",
        "modal-secret": "ws-spoofed",
        "x-mfk-edge-secret": "spoofed-spoofed-spoofed-spoofed-spoofed",
        "x-forwarded-host": "evil.example",
        "x-forwarded-proto": "http",
        "x-forwarded-for": "203.0.113.66",
        "x-real-ip": "203.0.113.66",
        "forwarded": "for=203.0.113.66;host=evil.example",
        "modal-session-id": "s-42",  # not spoofing: a client's sticky-routing hint
    }
    response = _get(setup, port, "/whoami", headers=spoofed)
    # 200 means the ingress saw exactly one, correct, Modal-Key/-Secret and the app one edge
    # secret: the edge replaced the client's values instead of adding its own next to them.
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["url_for"] == f"https://{origin.PUBLIC_HOST}:{port}/whoami"
    assert body["client"] == "127.0.0.1"
    seen = body["headers"]
    assert "203.0.113.66" not in str(seen) and "evil.example" not in str(seen)
    assert "x-mfk-edge-secret" not in seen  # the lock drops it before the app
    assert "forwarded" not in seen and "x-real-ip" not in seen
    assert seen["x-forwarded-proto"] == "https"
    assert seen["modal-session-id"] == "s-42"  # Modal Servers route on it


def test_streamed_response_arrives_in_pieces(setup: Setup, edge: tuple[str, int]) -> None:
    _, port = edge
    arrivals: list[float] = []
    started = time.monotonic()
    with setup.client.stream(
        "GET",
        f"https://127.0.0.1:{port}/stream",
        headers={"host": f"{origin.PUBLIC_HOST}:{port}"},
        extensions={"sni_hostname": origin.PUBLIC_HOST},
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == origin.STREAM_CHUNKS
    total = origin.STREAM_GAP * (origin.STREAM_CHUNKS - 1)
    # Buffered, every event would arrive together at the end.
    assert arrivals[-1] - arrivals[0] > total * 0.6, arrivals


def test_post_is_not_retried_when_the_origin_times_out(setup: Setup, edge: tuple[str, int]) -> None:
    name, port = edge
    tag = f"{name}-{time.monotonic_ns()}"
    response = _get(setup, port, f"/slow?tag={tag}", method="POST", json={})
    assert response.status_code in (502, 504), response.text
    time.sleep(EDGE_READ_TIMEOUT + 1)  # time for a retry to land, had there been one
    assert setup.attempts(f"POST {tag}") == 1


@pytest.mark.parametrize("edge", ["nginx"], indirect=True)  # Caddy tries every request once
def test_nginx_retries_an_idempotent_get_so_the_post_check_can_fail(
    setup: Setup, edge: tuple[str, int]
) -> None:
    _, port = edge
    tag = f"get-{time.monotonic_ns()}"
    response = _get(setup, port, f"/slow?tag={tag}")
    assert response.status_code in (502, 504)
    assert setup.attempts(f"GET {tag}") == 2


def test_oversized_body_gets_413_at_the_edge(setup: Setup, edge: tuple[str, int]) -> None:
    _, port = edge
    body = b'{"text": "' + b"a" * (EDGE_MAX_BODY + 1) + b'"}'
    response = _get(
        setup, port, "/embed", method="POST", content=body,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 413
    small = _get(setup, port, "/embed", method="POST", json={"text": "a" * 30_000})
    assert small.status_code == 422  # under the edge's limit it reaches the app


def test_modal_redirect_points_at_the_public_host(setup: Setup, edge: tuple[str, int]) -> None:
    _, port = edge
    response = _get(setup, port, "/__modal_redirect")
    assert response.status_code == 303
    assert response.headers["location"] == f"https://{origin.PUBLIC_HOST}:{port}/__result?id=7"


def test_edge_refuses_an_origin_certificate_it_cannot_verify(
    setup: Setup, edge: tuple[str, int]
) -> None:
    _, port = edge
    response = _get(setup, port, "/whoami", host=WRONG_CA_HOST)
    assert response.status_code == 502


def test_stand_in_routes_on_host_and_sni_like_modal(setup: Setup) -> None:
    # Every 200 through an edge therefore proves the edge sent the origin's Host and SNI.
    wrong_host = setup.origin("GET", "/whoami", {**_token(edge=True), "host": "other.test"})
    assert wrong_host.status_code == 404
    context = ssl.create_default_context(cafile=str(setup.ca.cert))
    context.check_hostname = False  # only the server's SNI check can refuse this one
    with httpx.Client(verify=context, timeout=10.0) as fresh, pytest.raises(httpx.ConnectError):
        fresh.get(
            f"https://127.0.0.1:{setup.origin_port}/whoami",
            headers={"host": origin.ORIGIN_HOST, **_token(edge=True)},
            extensions={"sni_hostname": "other.test"},
        )


def test_origin_without_token_answers_401(setup: Setup) -> None:
    assert setup.origin("GET", "/whoami", {}).status_code == 401
    wrong = {"modal-key": origin.MODAL_KEY, "modal-secret": "ws-wrong"}
    assert setup.origin("GET", "/whoami", wrong).status_code == 401


def test_origin_with_token_but_no_edge_secret_is_refused_by_the_app(setup: Setup) -> None:
    for headers in (
        _token(edge=False),
        {**_token(edge=False), "x-mfk-edge-secret": "x" * len(origin.EDGE_SECRET)},
    ):
        headers["x-forwarded-host"] = origin.PUBLIC_HOST
        response = setup.origin("POST", "/embed", headers, json={"text": "hi"})
        assert response.status_code == 403
        assert response.json() == {"detail": "forbidden", "code": "forbidden"}
    # Liveness stays open for probes (it says only "ok"); readiness does not.
    assert setup.origin("GET", "/healthz", _token(edge=False)).status_code == 200
    assert setup.origin("GET", "/readyz", _token(edge=False)).status_code == 403
    # The edge secret alone (no forwarded host): served, with the origin's own URL.
    response = setup.origin("GET", "/whoami", _token(edge=True))
    assert response.status_code == 200
    assert response.json()["url_for"] == f"https://{origin.ORIGIN_HOST}/whoami"
