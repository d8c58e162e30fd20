"""The code blocks of docs/custom-domain.md. The decorators and the origin-lock snippet run as
written; the shell blocks run in bash with `mfk edge` and the shell itself for real, while what
needs a Modal account, root or a DNS name (`modal`, `mfk deploy`, `sudo`, `wrangler`, `caddy`,
`traefik`) is replaced by a stand-in that records how it was called, and the test checks those
calls against the files `mfk edge` wrote. The last block's curl lines need the live domain and
a deployment: only their routes and hosts are checked. The generated configs themselves are
run by real nginx, Caddy and Node in test_edge_proxies.py and test_edge_configs.py."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from modal_fastapi_kit._modal.build import deployment
from modal_fastapi_kit.cli._loading import UsageError, load_service
from modal_fastapi_kit.exceptions import ConfigError

from .._docs import blocks_of
from .._servers import BIN, ROOT

PAGE = ROOT / "docs" / "custom-domain.md"
NATIVE, LOCKED, ORIGIN_LOCK = blocks_of(PAGE, "python")
SETUP, NGINX, CADDY, WORKER, TRAEFIK, CHECKING = blocks_of(PAGE, "bash")
MODAL_KEY, MODAL_SECRET = "wk-doc-test-key", "ws-doc-test-secret"
EDGE_SECRET = "doc-test-edge-secret-0123456789abcdef"
STAND_INS = ("modal", "sudo", "wrangler", "caddy", "traefik", "nginx", "systemctl")


def test_the_page_has_the_blocks_this_file_runs():
    assert (len(blocks_of(PAGE, "python")), len(blocks_of(PAGE, "bash"))) == (3, 6)
    assert "custom_domains=" in NATIVE and "requires_proxy_auth=True" in LOCKED
    assert "apply_origin_lock" in ORIGIN_LOCK and "modal secret create" in SETUP
    for edge, code in (("nginx", NGINX), ("caddy", CADDY), ("traefik", TRAEFIK)):
        assert code.startswith(f"mfk edge {edge} ")
    assert WORKER.startswith("mfk edge cloudflare-worker ")


# -- the decorators -----------------------------------------------------------------------------


def service(tmp_path: Path, code: str) -> type:
    """The page's class in a file of its own; its elided body (``...``) is the example's."""
    source = re.sub(
        r"^(class Embedder\(.*\)): \.\.\.$",
        r"\1:\n    load = Example.load\n    predict_batch = Example.predict_batch",
        code,
        flags=re.M,
    )
    assert source != code
    path = tmp_path / "embeddings_service.py"
    path.write_text(
        "from examples.embeddings import EmbedIn, EmbedOut\n"
        "from examples.embeddings import Embedder as Example\n"
        "from modal_fastapi_kit import ModelServer, gpu_service\n\n" + source
    )
    return load_service(f"{path}:Embedder")


def rows(built: object) -> dict[str, str]:
    from modal_fastapi_kit.cli._check import describe

    return {key: value for _, section in describe(built) for key, value in section}  # type: ignore[arg-type]


def test_the_native_domain_reaches_the_web_endpoint(tmp_path):
    embedder = service(tmp_path, NATIVE)
    assert list(embedder.service_config().custom_domains) == ["api.example.com"]
    assert rows(deployment(embedder))["custom domains*"] == "api.example.com"


@pytest.mark.parametrize(
    ("domains", "works"),
    [
        ('["*.example.com"]', True),  # "a list; "*.example.com" works too"
        ('"api.example.com"', False),  # a bare string
        ('["https://api.example.com"]', False),  # a scheme
        ('["api.example.com:8443"]', False),  # a port
        ('["api.example.com/v1"]', False),  # a path
    ],
)
def test_custom_domains_are_checked_when_the_class_is_decorated(tmp_path, domains, works):
    code = NATIVE.replace('custom_domains=["api.example.com"]', f"custom_domains={domains}")
    assert code != NATIVE
    if works:
        service(tmp_path, code)
    else:
        with pytest.raises(UsageError, match=r"custom_domains=.*(hostnames such as|pass a list)"):
            service(tmp_path, code)  # the decorator's ConfigError, as `mfk` reports it


def test_the_locked_class_asks_for_both_locks_and_gets_the_setup_s_secret(tmp_path):
    embedder = service(tmp_path, LOCKED)
    config = embedder.service_config()
    assert config.requires_proxy_auth is True
    assert config.edge_secret_env == "MFK_EDGE_SECRET"
    assert list(config.public_hosts) == ["api.example.com"]
    created = re.search(r"modal secret create (\S+) (\w+)=", SETUP)
    assert created is not None and list(config.secrets) == [created.group(1)]
    assert created.group(2) == config.edge_secret_env
    built = deployment(embedder)
    assert f"modal.Secret.from_name('{created.group(1)}')" in built.web_function.info().secrets
    assert rows(built)["proxy auth"].startswith("on")


# -- the origin lock in an app of your own -------------------------------------------------------


def locked_app(tmp_path: Path, part: str) -> FastAPI:
    """An app with a route that shows its public URL, locked by one half of the snippet."""
    imports, _, by_hand = ORIGIN_LOCK.partition("# or, by hand:\n")
    first_line, _, apply = imports.partition("\n\n")
    app = FastAPI()

    @app.get("/where", name="where")
    def where(request: Request) -> dict[str, str]:
        return {"url": str(request.url_for("where"))}

    @app.get("/ml/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    namespace = {"app": app, "os": os, "Embedder": service(tmp_path, LOCKED)}
    code = first_line + "\n" + (apply if part == "apply" else by_hand)
    exec(compile(code, "custom-domain.md", "exec"), namespace)
    return app


@pytest.mark.parametrize("part", ["apply", "by hand"])
def test_the_origin_lock_refuses_without_the_secret_and_uses_the_public_host(
    tmp_path, monkeypatch, part
):
    monkeypatch.setenv("MFK_EDGE_SECRET", EDGE_SECRET)
    with TestClient(locked_app(tmp_path, part)) as client:
        refused = client.get("/where")
        edge = {
            "x-mfk-edge-secret": EDGE_SECRET,
            "x-forwarded-host": "api.example.com",
            "x-forwarded-proto": "https",
        }
        through_the_edge = client.get("/where", headers=edge)
        probe = client.get("/ml/healthz")
    assert (refused.status_code, refused.json()) == (
        403,
        {"detail": "forbidden", "code": "forbidden"},
    )
    assert through_the_edge.json() == {"url": "https://api.example.com/where"}
    assert probe.status_code == (200 if part == "by hand" else 403)  # its open_paths


def test_a_missing_or_short_secret_stops_the_app(tmp_path, monkeypatch):
    monkeypatch.delenv("MFK_EDGE_SECRET", raising=False)
    with pytest.raises(ConfigError, match="MFK_EDGE_SECRET"):
        locked_app(tmp_path, "apply")
    monkeypatch.setenv("MFK_EDGE_SECRET", "short")
    app = locked_app(tmp_path, "apply")
    with pytest.raises(ConfigError, match="at least 32"), TestClient(app):
        pass


# -- the shell blocks ----------------------------------------------------------------------------


@pytest.fixture
def shell(tmp_path: Path) -> Callable[[str], tuple[Path, list[list[str]]]]:
    """Run a block with bash -e in a fresh folder; give the folder and the stand-ins' calls."""
    stubs = tmp_path / "stand-ins"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    # Each call is a line of the log, quoted as bash quotes it; traefik also notes how many
    # MFK_ variables its environment holds.
    record = f'{{ printf "%q " "$(basename "$0")" "$@"; echo; }} >> {log}\n'
    for name in STAND_INS:
        (stubs / name).write_text(f"#!/usr/bin/env bash\n{record}")
    with (stubs / "traefik").open("a") as traefik:
        traefik.write(f'echo "MFK_ variables: $(env | grep -c ^MFK_)" >> {log}\n')
    # `mfk deploy` needs an account; every other `mfk` command is the real one.
    (stubs / "mfk").write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = deploy ]; then {record}exit 0; fi\nexec {BIN / "mfk"} "$@"\n'
    )
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MFK_", "MODAL_"))}
    env["PATH"] = f"{stubs}:{BIN}:{env['PATH']}"

    def run(script: str, **extra_env: str) -> tuple[Path, list[list[str]]]:
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        done = subprocess.run(
            ["bash", "-ec", script],
            cwd=work,
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        calls = log.read_text().splitlines() if log.exists() else []
        return work, [shlex.split(call) for call in calls]

    return run


def tokens(**more: str) -> dict[str, str]:
    return {"MFK_MODAL_KEY": MODAL_KEY, "MFK_MODAL_SECRET": MODAL_SECRET, **more}


def test_the_setup_makes_one_secret_for_modal_and_the_edge(shell):
    script = SETUP.replace("wk-...", MODAL_KEY).replace("ws-...", MODAL_SECRET)
    work, calls = shell(script)
    (create,), (deploy,) = (
        [c for c in calls if c[:3] == ["modal", "secret", "create"]],
        [c for c in calls if c[:2] == ["mfk", "deploy"]],
    )
    name, assignment = create[3:5]
    assert name == "mfk-edge" and assignment.startswith("MFK_EDGE_SECRET=")
    secret = assignment.removeprefix("MFK_EDGE_SECRET=")
    assert len(secret) >= 32
    assert deploy[2] == "embeddings.py"
    conf = work / "edge" / "api.example.com.conf"
    secrets = work / "edge" / "api.example.com.secrets.conf"
    assert "my-workspace--embeddings-api.modal.run" in conf.read_text()
    assert f'X-Mfk-Edge-Secret "{secret}"' in secrets.read_text()  # the app's value
    assert f'Modal-Key "{MODAL_KEY}"' in secrets.read_text()
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600


def test_nginx_installs_the_files_it_wrote_and_includes_the_site(shell):
    work, calls = shell(NGINX, **tokens(MFK_EDGE_SECRET=EDGE_SECRET))
    written = sorted(p.name for p in (work / "edge").iterdir())
    assert written == ["api.example.com.conf", "api.example.com.secrets.conf"]
    (install,) = [c for c in calls if c[:2] == ["sudo", "install"] and "-d" not in c]
    assert sorted(Path(p).name for p in install[4:-1]) == written  # ./edge/*, expanded
    assert install[-1] == "/etc/nginx/mfk/"
    include = re.search(r"include (/etc/nginx/mfk/\S+);", NGINX)
    assert include is not None and Path(include.group(1)).name in written
    conf = (work / "edge" / "api.example.com.conf").read_text()
    assert "include /etc/nginx/mfk/api.example.com.secrets.conf;" in conf  # --install-dir
    assert ["sudo", "tee", "/etc/nginx/conf.d/mfk.conf"] in [c[:3] for c in calls]
    assert [c[:3] for c in calls[-2:]] == [["sudo", "nginx", "-t"], ["sudo", "systemctl", "reload"]]


def test_caddy_imports_the_site_file_and_reads_the_env_file_it_wrote(shell):
    work, calls = shell(CADDY, **tokens(MFK_EDGE_SECRET=EDGE_SECRET))
    written = sorted(p.name for p in (work / "edge").iterdir())
    assert written == ["api.example.com.caddy", "edge.env"]
    imported = re.search(r"import (\S+)", CADDY)
    assert imported is not None and Path(imported.group(1)).name == "api.example.com.caddy"
    (run,) = [c for c in calls if c[0] == "caddy"]
    envfile = run[run.index("--envfile") + 1]
    assert Path(envfile).name == "edge.env"
    names = re.findall(r"^(\w+)=", (work / "edge" / "edge.env").read_text(), flags=re.M)
    assert sorted(names) == ["MFK_EDGE_SECRET", "MFK_MODAL_KEY", "MFK_MODAL_SECRET"]
    if shutil.which("caddy"):  # the real one takes the options the page passes
        flags = subprocess.run(
            ["caddy", "run", "--help"], capture_output=True, text=True, timeout=30
        )
        assert "--envfile" in flags.stdout + flags.stderr and "--config" in flags.stdout


def test_the_worker_s_secrets_are_the_ones_its_env_file_holds(shell):
    work, calls = shell(WORKER, **tokens(MFK_EDGE_SECRET=EDGE_SECRET))
    worker = work / "worker"
    assert sorted(p.name for p in worker.iterdir()) == ["edge.env", "worker.js", "wrangler.toml"]
    put = [c[3] for c in calls if c[:3] == ["wrangler", "secret", "put"]]
    names = re.findall(r"^(\w+)=", (worker / "edge.env").read_text(), flags=re.M)
    assert put == names == ["MFK_MODAL_KEY", "MFK_MODAL_SECRET", "MFK_EDGE_SECRET"]
    assert calls[-1][:2] == ["wrangler", "deploy"]
    toml = (worker / "wrangler.toml").read_text()
    assert 'pattern = "api.example.com", custom_domain = true' in toml


def test_traefik_starts_with_the_installed_config_and_its_secrets_in_the_environment(shell):
    assert "--install-dir /etc/traefik" in TRAEFIK
    # The second line runs where the files were installed: here, the folder they were written to.
    write, start = TRAEFIK.split("\nset -a", 1)
    work, _ = shell(write, **tokens(MFK_EDGE_SECRET=EDGE_SECRET))
    edge = work / "edge"
    assert sorted(p.name for p in edge.iterdir()) == ["dynamic.yml", "edge.env", "traefik.yml"]
    assert 'filename: "/etc/traefik/dynamic.yml"' in (edge / "traefik.yml").read_text()
    assert "PathPrefix(`/generate`)" in (edge / "dynamic.yml").read_text()
    _, calls = shell("set -a" + start.replace("/etc/traefik/", f"{edge}/"))
    (traefik,) = [c for c in calls if c[0] == "traefik"]
    assert traefik[1:] == [f"--configFile={edge}/traefik.yml"]
    assert calls[-1] == ["MFK_", "variables:", "3"]  # from edge.env, exported by set -a


def test_the_checks_name_the_page_s_hosts_and_the_example_s_routes():
    from examples.embeddings import Embedder

    urls = re.findall(r"https://([^/\s]+)(/\S*)", CHECKING)
    assert [host for host, _ in urls] == [
        "api.example.com",
        "my-workspace--embeddings-api.modal.run",
        "api.example.com",
    ]
    assert "--origin https://my-workspace--embeddings-api.modal.run" in SETUP
    routes = {route.path for route in Embedder.router().routes}
    assert {path for _, path in urls} <= routes
