"""The origin the edge tests put behind nginx and Caddy, run as its own process.

``python -m tests.edge_support.origin --port P --cert C --key K`` serves, over TLS on
127.0.0.1, a stand-in for Modal's ingress (``ModalIngress``) in front of an app built with
the library: the example Embedder with the origin lock on, plus a few routes that let the
tests see what arrived (``/whoami``), stream (``/stream``), hang (``/slow``) and count.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ssl
from collections import Counter
from collections.abc import AsyncIterator

import uvicorn
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from examples.embeddings import Embedder
from modal_fastapi_kit import gpu_service

ORIGIN_HOST = "ws--embeddings.modal.test"
PUBLIC_HOST = "api.example.test"
MODAL_KEY = "wk-testkey0123456789"
MODAL_SECRET = "ws-testsecret0123456789"
EDGE_SECRET = "edge-secret-for-tests-0123456789abcdef"
EDGE_SECRET_ENV = "MFK_TEST_EDGE_SECRET"
STREAM_CHUNKS = 5
STREAM_GAP = 0.4
SLOW_SECONDS = 6.0


@gpu_service(
    name="embeddings-locked",
    route="/embed",
    max_batch_size=8,
    wait_ms=5,
    edge_secret_env=EDGE_SECRET_ENV,
    public_hosts=[PUBLIC_HOST],
)
class LockedEmbedder(Embedder):
    """The example Embedder, reachable only through the edge."""


class ModalIngress:
    """Like Modal's ingress: routes on Host, wants the proxy-auth token, strips it, forwards."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = list(scope["headers"])
        host = next((v.decode() for k, v in headers if k == b"host"), "")
        if host.partition(":")[0] != ORIGIN_HOST:
            await _plain(send, 404, b"modal-http: invalid function call")
            return
        keys = [v for k, v in headers if k == b"modal-key"]
        secrets = [v for k, v in headers if k == b"modal-secret"]
        if not (
            len(keys) == 1
            and len(secrets) == 1
            and hmac.compare_digest(keys[0], MODAL_KEY.encode())
            and hmac.compare_digest(secrets[0], MODAL_SECRET.encode())
        ):
            await _plain(send, 401, b"modal-http: missing or invalid proxy auth")
            return
        if scope["path"] == "/__modal_redirect":  # Modal's 303 after 150 s points at itself
            location = f"https://{ORIGIN_HOST}/__result?id=7".encode()
            await _plain(send, 303, b"", [(b"location", location)])
            return
        peer = scope["client"][0] if scope.get("client") else "0.0.0.0"
        forwarded = [v.decode() for k, v in headers if k == b"x-forwarded-for"]
        kept = [(k, v) for k, v in headers if k not in (b"modal-key", b"modal-secret")]
        kept = [(k, v) for k, v in kept if k != b"x-forwarded-for"]
        kept.append((b"x-forwarded-for", ", ".join([*forwarded, peer]).encode()))
        await self.app(dict(scope, headers=kept), receive, send)


async def _plain(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


def build_origin() -> ASGIApp:
    app = LockedEmbedder.asgi_app()
    attempts: Counter[str] = Counter()

    @app.get("/whoami", name="whoami")
    async def whoami(request: Request) -> JSONResponse:
        seen = {k: v for k, v in request.headers.items() if k != "host"}
        return JSONResponse(
            {
                "url_for": str(request.url_for("whoami")),
                "client": request.client.host if request.client else None,
                "headers": seen,
            }
        )

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(STREAM_CHUNKS):
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(STREAM_GAP)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.api_route("/slow", methods=["GET", "POST"])
    async def slow(request: Request) -> JSONResponse:
        attempts[f"{request.method} {request.query_params.get('tag', '')}"] += 1
        await asyncio.sleep(SLOW_SECONDS)
        return JSONResponse({"done": True})

    @app.get("/attempts")
    async def get_attempts(key: str) -> JSONResponse:
        return JSONResponse({"count": attempts[key]})

    return ModalIngress(app)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        build_origin(),
        host="127.0.0.1",
        port=args.port,
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
        log_level="warning",
        lifespan="on",
    )
    config.load()
    assert config.ssl is not None
    config.ssl.sni_callback = _require_sni
    asyncio.run(uvicorn.Server(config).serve())


def _require_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> int | None:
    # Modal's ingress picks the certificate by SNI: a client that sends none gets nothing.
    if name != ORIGIN_HOST:
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
    return None


if __name__ == "__main__":
    main()
