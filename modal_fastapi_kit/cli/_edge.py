"""``mfk edge nginx|caddy|cloudflare-worker|traefik``: write an edge config for a custom domain.

The Modal proxy-auth token comes from ``MFK_MODAL_KEY`` / ``MFK_MODAL_SECRET`` and the edge
secret from ``MFK_EDGE_SECRET`` (made fresh when unset), never from the command line, where
``ps`` and shell history would keep them.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from .._config import DEFAULT_MAX_BODY_BYTES
from .._edge import EDGES, EdgeSecrets, EdgeSpec, render, write_files
from .._edge._spec import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    EDGE_SECRET_ENV,
    MODAL_KEY_ENV,
    MODAL_SECRET_ENV,
)
from ..exceptions import ConfigError
from ._loading import UsageError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "edge",
        help="write an nginx, Caddy, Cloudflare Worker or Traefik config for a custom domain",
        description="Write an edge config that serves --domain and forwards to the Modal URL "
        f"--origin with the Modal proxy-auth token (from ${MODAL_KEY_ENV}, ${MODAL_SECRET_ENV}) "
        f"and the edge secret (from ${EDGE_SECRET_ENV}; a new one is made when unset).",
    )
    parser.add_argument("edge", choices=sorted(EDGES), help="which edge")
    parser.add_argument("--domain", required=True, help="public hostname, e.g. api.example.com")
    parser.add_argument(
        "--origin",
        required=True,
        help="the function's URL, e.g. https://my-workspace--embeddings.modal.run",
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="folder to write into")
    parser.add_argument("--listen", default="443", help="PORT or ADDRESS:PORT (default 443)")
    parser.add_argument("--cert", help="TLS certificate (PEM) for --domain")
    parser.add_argument("--key", help="its private key (PEM)")
    parser.add_argument(
        "--ca-bundle", help="CA bundle that verifies the origin (default: the system's)"
    )
    parser.add_argument(
        "--origin-address",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="connect here instead of resolving the origin's name (repeatable); Host and SNI "
        "still name the origin",
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument(
        "--read-timeout",
        type=int,
        default=DEFAULT_READ_TIMEOUT,
        help=f"seconds to wait for the origin (default {DEFAULT_READ_TIMEOUT}, above Modal's 150)",
    )
    parser.add_argument("--connect-timeout", type=int, default=DEFAULT_CONNECT_TIMEOUT)
    parser.add_argument(
        "--install-dir",
        help="where the files will live on the edge host (default: --out, absolute)",
    )
    parser.add_argument(
        "--stream-path",
        action="append",
        default=[],
        metavar="PREFIX",
        help="traefik: path prefix that streams, kept out of the buffering body limit",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    try:
        spec = EdgeSpec(
            domain=args.domain.lower(),
            origin=args.origin,
            listen=args.listen,
            cert=args.cert,
            key=args.key,
            ca_bundle=args.ca_bundle,
            origin_addresses=tuple(args.origin_address),
            max_body_bytes=args.max_body_bytes,
            read_timeout=args.read_timeout,
            connect_timeout=args.connect_timeout,
            install_dir=args.install_dir or str(out.resolve()),
            stream_paths=tuple(args.stream_path),
        )
        edge_secret = os.environ.get(EDGE_SECRET_ENV) or secrets.token_urlsafe(32)
        made_secret = not os.environ.get(EDGE_SECRET_ENV)
        edge_secrets = EdgeSecrets(
            modal_key=_required_env(MODAL_KEY_ENV, "wk-"),
            modal_secret=_required_env(MODAL_SECRET_ENV, "ws-"),
            edge_secret=edge_secret,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    for path in write_files(render(args.edge, spec, edge_secrets), out):
        print(f"wrote {path}")
    if made_secret:
        held_in = f"{spec.domain}.secrets.conf" if args.edge == "nginx" else "edge.env"
        print(
            f"made a new edge secret (${EDGE_SECRET_ENV} was unset); it is in {out / held_in}. "
            f"Give the app the same value: modal secret create mfk-edge {EDGE_SECRET_ENV}=...",
            file=sys.stderr,
        )
    return 0


def _required_env(name: str, prefix: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"${name} is not set: create a proxy-auth token in the Modal dashboard (Settings > "
            f"Proxy Auth Tokens) and export {name}={prefix}..."
        )
    return value
