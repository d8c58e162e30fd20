"""``mfk edge``: the generated files for every edge, read back structurally.

nginx and Caddy also run for real in test_edge_proxies; here Caddy's own adapter reads the
Caddyfile, PyYAML reads Traefik's files and Node runs the Worker's fetch handler.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from modal_fastapi_kit.cli import main

DOMAIN = "api.example.com"
ORIGIN_HOST = "ws--embeddings.modal.run"
ORIGIN = f"https://{ORIGIN_HOST}"
KEY, SECRET, EDGE = "wk-key123", "ws-secret456", "e" * 43
HARNESS = Path(__file__).parent.parent / "edge_support" / "worker_harness.mjs"


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFK_MODAL_KEY", KEY)
    monkeypatch.setenv("MFK_MODAL_SECRET", SECRET)
    monkeypatch.setenv("MFK_EDGE_SECRET", EDGE)


def _generate(edge: str, out: Path, *extra: str) -> dict[str, Path]:
    args = ["edge", edge, "--domain", DOMAIN, "--origin", ORIGIN, "--out", str(out), *extra]
    assert main(args) == 0
    return {p.name: p for p in out.iterdir()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("edge", ["nginx", "caddy", "cloudflare-worker", "traefik"])
def test_secrets_live_only_in_mode_600_files(edge: str, tmp_path: Path, tokens: None) -> None:
    files = _generate(edge, tmp_path)
    secret_files = {name for name, path in files.items() if _mode(path) == 0o600}
    assert secret_files, files
    for name, path in files.items():
        text = path.read_text()
        holds = all(value in text for value in (KEY, SECRET, EDGE))
        assert holds == (name in secret_files), name
        assert _mode(path) in (0o600, 0o644)


def test_nginx_site(tmp_path: Path, tokens: None) -> None:
    files = _generate("nginx", tmp_path, "--install-dir", "/etc/nginx/mfk")
    site = files[f"{DOMAIN}.conf"].read_text()
    lines = {line.strip() for line in site.splitlines()}
    for expected in (
        f"server_name {DOMAIN};",
        f"server {ORIGIN_HOST}:443 max_fails=0;",
        f"proxy_set_header Host {ORIGIN_HOST};",
        "proxy_ssl_server_name on;",
        f"proxy_ssl_name {ORIGIN_HOST};",
        "proxy_ssl_verify on;",
        "proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;",
        "proxy_set_header X-Forwarded-Host $http_host;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        'proxy_set_header Forwarded "";',
        f"include /etc/nginx/mfk/{DOMAIN}.secrets.conf;",
        "proxy_buffering off;",
        "proxy_read_timeout 180s;",
        "client_max_body_size 1048576;",
        f"proxy_redirect https://{ORIGIN_HOST}/ https://$http_host/;",
    ):
        assert expected in lines, expected
    assert "non_idempotent" not in site.replace('told "non_idempotent"', "")
    secrets = files[f"{DOMAIN}.secrets.conf"].read_text()
    assert f'proxy_set_header Modal-Key "{KEY}";' in secrets
    assert f'proxy_set_header X-Mfk-Edge-Secret "{EDGE}";' in secrets


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")
def test_caddy_site_as_caddy_reads_it(tmp_path: Path, tokens: None) -> None:
    files = _generate("caddy", tmp_path)
    adapted = subprocess.run(
        ["caddy", "adapt", "--config", str(files[f"{DOMAIN}.caddy"]), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={"MFK_MODAL_KEY": KEY, "MFK_MODAL_SECRET": SECRET, "MFK_EDGE_SECRET": EDGE},
    )
    config = json.loads(adapted.stdout)
    text = json.dumps(config)
    proxy = _find(config, "handler", "reverse_proxy")
    assert proxy["flush_interval"] == -1
    assert proxy["transport"]["tls"]["server_name"] == ORIGIN_HOST
    assert proxy["transport"]["response_header_timeout"] == 180 * 10**9
    assert proxy["upstreams"] == [{"dial": f"{ORIGIN_HOST}:443"}]
    assert "retries" not in proxy.get("load_balancing", {})
    assert "try_duration" not in proxy.get("load_balancing", {})
    request_headers = proxy["headers"]["request"]
    assert request_headers["set"]["Host"] == [ORIGIN_HOST]
    assert request_headers["set"]["Modal-Key"] == [KEY]
    assert request_headers["set"]["X-Forwarded-For"] == ["{http.request.remote.host}"]
    assert "Forwarded" in request_headers["delete"]
    assert _find(config, "handler", "request_body")["max_size"] == 1048576
    assert DOMAIN in text


def _find(node: object, key: str, value: str) -> dict[str, object] | None:
    if isinstance(node, dict):
        if node.get(key) == value:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            found = _find(child, key, value)
            if found is not None:
                return found
    return None


def test_traefik_files(tmp_path: Path, tokens: None) -> None:
    yaml = pytest.importorskip("yaml")
    files = _generate("traefik", tmp_path, "--stream-path", "/generate")
    static = yaml.safe_load(files["traefik.yml"].read_text())
    assert static["entryPoints"]["websecure"]["address"] == ":443"
    assert "forwardedHeaders" not in static["entryPoints"]["websecure"]
    dynamic = yaml.safe_load(files["dynamic.yml"].read_text())["http"]
    name = "mfk-api-example-com"
    router, stream = dynamic["routers"][name], dynamic["routers"][f"{name}-stream"]
    assert router["rule"] == f"Host(`{DOMAIN}`)"
    assert router["middlewares"] == [f"{name}-headers", f"{name}-body-limit"]
    assert stream["middlewares"] == [f"{name}-headers"]  # no response-buffering middleware
    assert "PathPrefix(`/generate`)" in stream["rule"]
    assert not any("retry" in m for m in dynamic["middlewares"].values())
    headers = dynamic["middlewares"][f"{name}-headers"]["headers"]["customRequestHeaders"]
    assert headers["Host"] == ORIGIN_HOST
    assert headers["Modal-Key"] == '{{ env "MFK_MODAL_KEY" }}'
    assert headers["X-Forwarded-Prefix"] == ""
    limit = dynamic["middlewares"][f"{name}-body-limit"]["buffering"]
    assert limit == {"maxRequestBodyBytes": 1048576}
    service = dynamic["services"][name]["loadBalancer"]
    assert service["servers"] == [{"url": f"https://{ORIGIN_HOST}:443"}]
    transport = dynamic["serversTransports"][name]
    assert transport["serverName"] == ORIGIN_HOST
    assert "insecureSkipVerify" not in transport
    assert transport["forwardingTimeouts"]["responseHeaderTimeout"] == "180s"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_worker_fetch_handler_under_node(tmp_path: Path, tokens: None) -> None:
    files = _generate("cloudflare-worker", tmp_path, "--max-body-bytes", "1000")
    module = tmp_path / "worker.mjs"
    module.write_text(files["worker.js"].read_text())
    done = subprocess.run(
        ["node", str(HARNESS), str(module), ORIGIN, "1000"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    results = {r["name"]: r for r in json.loads(done.stdout)}

    spoof = results["spoof"]
    (sent,) = spoof["upstream"]
    assert sent["url"] == f"{ORIGIN}/whoami?x=1"
    assert sent["redirect"] == "manual"
    assert sent["headers"] == {
        "accept": "text/plain",
        "modal-session-id": "s-42",  # the client's sticky-routing hint passes
        "modal-key": "wk-key",
        "modal-secret": "ws-secret",
        "x-mfk-edge-secret": "edge",
        "x-forwarded-host": DOMAIN,
        "x-forwarded-proto": "https",
        "x-forwarded-for": "198.51.100.7",
    }
    (post,) = results["post"]["upstream"]
    assert (post["method"], post["body"]) == ("POST", '{"text":"hi"}')
    for name in ("too-large", "too-large-chunked"):
        assert results[name]["status"] == 413
    assert results["too-large"]["upstream"] == []
    stream = results["stream"]
    assert stream["text"] == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert stream["arrivals"][-1] - stream["arrivals"][0] >= 400  # piece by piece
    redirect = results["redirect"]
    assert redirect["status"] == 303
    assert redirect["headers"]["location"] == f"https://{DOMAIN}/__result?id=7"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--domain", "https://api.example.com"], "--domain 'https://api.example.com' is not"),
        (["--domain", "*.example.com"], "no scheme, port, path or wildcard"),
        (["--origin", "http://x.modal.run"], "pass the function's HTTPS URL alone"),
        (["--origin", "https://x.modal.run/embed"], "pass the function's HTTPS URL alone"),
        (["--listen", "0.0.0.0"], "pass PORT or ADDRESS:PORT"),
        (["--cert", "/etc/a.pem"], "pass --cert and --key together"),
        (["--cert", "/etc/a b.pem", "--key", "/k"], "no spaces or quotes"),
        (["--read-timeout", "0"], "--read-timeout 0 is invalid"),
        (["--origin-address", "nope"], "pass HOST:PORT"),
    ],
)
def test_bad_arguments_say_what_and_how(
    args: list[str], message: str, tmp_path: Path, tokens: None, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--domain": DOMAIN, "--origin": ORIGIN}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["edge", "nginx", "--out", str(tmp_path / "out")]
    for flag, value in base.items():
        argv += [flag, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_token_says_where_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MFK_MODAL_KEY", raising=False)
    monkeypatch.setenv("MFK_MODAL_SECRET", SECRET)
    argv = ["edge", "caddy", "--domain", DOMAIN, "--origin", ORIGIN, "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "$MFK_MODAL_KEY is not set" in err and "Proxy Auth Tokens" in err


def test_malformed_token_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MFK_MODAL_KEY", 'wk-a"; evil')
    monkeypatch.setenv("MFK_MODAL_SECRET", SECRET)
    argv = ["edge", "nginx", "--domain", DOMAIN, "--origin", ORIGIN, "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "does not look like a Modal proxy-auth token id" in capsys.readouterr().err


def test_a_new_edge_secret_is_made_when_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MFK_MODAL_KEY", KEY)
    monkeypatch.setenv("MFK_MODAL_SECRET", SECRET)
    monkeypatch.delenv("MFK_EDGE_SECRET", raising=False)
    secrets = []
    for run in ("a", "b"):
        files = _generate("caddy", tmp_path / run)
        env = dict(
            line.split("=", 1) for line in files["edge.env"].read_text().splitlines() if "=" in line
        )
        secrets.append(env["MFK_EDGE_SECRET"])
        assert len(env["MFK_EDGE_SECRET"]) >= 32
    assert secrets[0] != secrets[1]
    assert "made a new edge secret" in capsys.readouterr().err
