"""``mfk deploy FILE.py``: run ``modal deploy`` on the file, then print the URL and next steps.

Before anything reaches Modal the file is imported and checked: it must hold one
``@gpu_service`` class and bind its app as ``app = X.modal_app()``; ``mfk check``'s errors (an
import the image lacks, a local module Modal does not ship) refuse the deploy, with their fixes,
unless ``--skip-checks``; and Modal credentials must be configured. A refused deploy, or one
without credentials, exits with status 1 and sends nothing.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from .._deploy_checks import check_service
from ..exceptions import ConfigError
from ._check import print_findings
from ._loading import UsageError, load_service

__all__ = ["CREDENTIALS_HELP", "SKIP_CHECKS", "add_parser", "run"]

SKIP_CHECKS = "--skip-checks"

CREDENTIALS_HELP = """\
error: no Modal credentials found, so nothing was deployed.
Get them in one of two ways:
  1. interactive: run `modal token new` (opens a browser, writes ~/.modal.toml)
  2. CI / servers: create a token at https://modal.com/settings/tokens and set
       export MODAL_TOKEN_ID=ak-...
       export MODAL_TOKEN_SECRET=as-...
Then run this command again. Without an account, `mfk check {target}`
shows what would be deployed."""

_URL_RE = re.compile(r"https://[A-Za-z0-9.-]+\.modal\.run\b")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="deploy a ModelServer to Modal with `modal deploy`",
        description="Run `modal deploy FILE.py` for a file that binds `app = X.modal_app()`, "
        "then print the endpoint URL and the next steps for a custom domain.",
    )
    parser.add_argument("target", metavar="FILE.py[:Class]", help="file holding the class")
    parser.add_argument("--env", "-e", help="Modal environment to deploy to")
    parser.add_argument(
        SKIP_CHECKS,
        action="store_true",
        help="deploy even when `mfk check` finds errors (an import the image lacks, a local "
        "module Modal does not ship)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._modal import credentials_configured, deployment

    server_cls = load_service(args.target)
    path = args.target if Path(args.target).is_file() else args.target.rpartition(":")[0]
    try:
        built = deployment(server_cls)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    module = sys.modules[server_cls.__module__]
    if getattr(module, "app", None) is not built.app:
        raise UsageError(
            f"{path} does not bind the Modal app: add `app = {server_cls.__name__}.modal_app()` "
            "at module level (`modal deploy` looks for a module-level `app`)"
        )
    # (A Namespace built without skip_checks, by a program calling run(), runs the checks.)
    if not getattr(args, "skip_checks", False) and not _checks_pass(server_cls, args.target):
        return 1
    if not credentials_configured():
        print(CREDENTIALS_HELP.format(target=path), file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "modal", "deploy", path]
    if args.env:
        command += ["--env", args.env]
    print("$ " + " ".join(["modal", *command[3:]]), flush=True)
    urls = _run_streaming(command)
    if urls is None:
        return 1
    if built.fetch_function_name is not None and not _fetch_weights(built, args.env, path):
        return 1
    _next_steps(built, urls)
    return 0


def _checks_pass(server_cls: type, target: str) -> bool:
    """Whether ``mfk check`` finds nothing that fails the deploy; else say what and how to fix
    it, on stderr."""
    errors = check_service(server_cls).errors
    if not errors:
        return True
    count = f"{len(errors)} error" + ("s" if len(errors) > 1 else "")
    print(
        f"error: `mfk check {target}` finds {count} that would fail on Modal, so nothing was "
        "deployed:",
        file=sys.stderr,
    )
    print_findings(errors, file=sys.stderr)
    print(
        f"Fix {'them' if len(errors) > 1 else 'it'} and run this command again, or pass "
        f"{SKIP_CHECKS} to deploy anyway.",
        file=sys.stderr,
    )
    return False


def _fetch_weights(built: Any, env: str | None, path: str) -> bool:
    """Run the deployed weights fetch function once (it returns at once when the pinned
    revision is already in the Volume); False, with what to do, if it fails."""
    import modal

    source, name = built.config.weights, built.fetch_function_name
    print(f"\nFetching weights {source.describe()} into Volume {source.volume!r} ...", flush=True)
    try:
        fetch = modal.Function.from_name(built.app.name, name, environment_name=env)
        result = fetch.remote()
    except Exception as exc:
        print(
            f"error: the weights fetch failed ({type(exc).__name__}: {exc}). The app is deployed; "
            f"its first container fetches hub weights itself. Retry with "
            f"`modal run {path}::{name}`.",
            file=sys.stderr,
        )
        return False
    state = "fetched" if result.get("fetched") else "already in the Volume, nothing fetched"
    print(f"Weights ready at {result.get('path')} ({state}).")
    return True


def _run_streaming(command: list[str]) -> list[str] | None:
    """Run ``command``, echoing its output; the modal.run URLs it printed, or None on failure."""
    urls: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            urls += [url for url in _URL_RE.findall(line) if url not in urls]
    if proc.returncode != 0:
        print(
            f"error: `modal deploy` exited with status {proc.returncode}; see its output above",
            file=sys.stderr,
        )
        return None
    return urls


def _next_steps(built: Any, urls: list[str]) -> None:
    config = built.config
    url = next((u for u in urls if built.label in u), urls[0] if urls else built.url_shape)
    print(f"\nDeployed {built.app.name}. Endpoint: {url}")
    print(f"  curl {url}/healthz")
    print(f"  curl -X POST {url}{config.route} -H 'content-type: application/json' -d '{{...}}'")
    if config.requires_proxy_auth:
        print("  (requires_proxy_auth: add -H 'Modal-Key: wk-...' -H 'Modal-Secret: ws-...')")
    print("\nNext steps for a custom domain (see docs/deploy.md):")
    if config.custom_domains:
        for host in config.custom_domains:
            print(f"  - point {host} at Modal: add the DNS record shown under Settings > Domains")
        print("  - custom domains need a Modal Team plan; the modal.run URL stays reachable")
    else:
        print("  - Team plan: add custom_domains=['api.example.com'] and deploy again")
        print(
            "  - any plan: set requires_proxy_auth=True, deploy again, and generate an edge "
            "config (nginx, Caddy, Cloudflare Worker) with `mfk edge`"
        )
