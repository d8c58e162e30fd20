"""Files over real HTTP (uvicorn on 127.0.0.1, curl where it reads naturally): a request
model's ``File`` fields from a multipart body, the raw body or a ``data:`` URI in JSON; file
answers; every malformed, oversized, mistyped or slow upload with its status and code (and
the server still serving after it); a router mounted in an app with a user's dependency and
API keys; the OpenAPI document; and what uploads cost: memory, temporary files, clients that
leave mid-upload."""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.dependencies.utils import solve_dependencies
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.routing import Route

from modal_fastapi_kit import gpu_service
from modal_fastapi_kit._http.route import KitRoute
from modal_fastapi_kit._http.upload_call import upload_call

from .._servers import BIN, ThreadedServer, free_port, running, wait_ready
from ..services import files
from ..services.files import (
    Album,
    Fetcher,
    GuardedFetcher,
    ManyFetcher,
    MiB,
    Pieces,
    Seer,
    Thumb,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # 1032 bytes, under Album's 4096
KEY = "files-key-0123456789abcdef"
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@gpu_service(name="keyed-album", route="/album", auth="api-key", max_body_bytes=256 * 1024)
class KeyedAlbum(Album):
    pass


TEAMS: list[str] = []  # the x-team each request showed the user's dependency


async def require_team(request: Request) -> None:
    team = request.headers.get("x-team")
    if team is None:
        raise HTTPException(403, "send x-team")
    TEAMS.append(team)


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    """An app of the user's own, with the file routers included, and Thumb's app (the
    kit's front) mounted under /thumbs."""
    app = FastAPI()

    @app.get("/own")
    def own() -> dict[str, str]:
        return {"own": "route"}

    for cls in (Seer, Album, Pieces):
        app.include_router(cls.router())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MFK_API_KEYS", KEY)
        keyed = KeyedAlbum.router()
    app.include_router(keyed, prefix="/ml", dependencies=[Depends(require_team)])
    with ThreadedServer(app) as served:
        wait_ready(served.url)
        yield served.url


@pytest.fixture(scope="module")
def thumb_url() -> Iterator[str]:
    with ThreadedServer(Thumb.asgi_app()) as served:  # the app the kit builds
        wait_ready(served.url)
        yield served.url


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def curl(*args: str) -> tuple[int, str]:
    """curl's status and body."""
    done = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def exchange(url: str, head: bytes, body: bytes = b"", *, trickle: float = 0) -> tuple[int, Any]:
    """Send a request as given on a raw socket (the body a byte every ``trickle`` seconds,
    while the server reads it) and return the status and JSON body of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        try:
            if trickle:
                for byte in body:
                    sock.sendall(bytes([byte]))
                    if select.select([sock], [], [], trickle)[0]:
                        break  # the server answered
            else:
                sock.sendall(body)
        except OSError:
            pass  # the server answered and closed before the body was all sent
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and _complete(answer):
                break
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.partition(b"\r\n\r\n")[2])


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def post_head(path: str, content_type: str, length: int | None = None, **extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def form(parts: list[tuple[str, str | None, bytes, str | None]], boundary: str = "b0und") -> bytes:
    """A multipart body: (name, filename, data, content type) per part."""
    out = b""
    for name, filename, data, kind in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if kind:
            out += f"Content-Type: {kind}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def still_serving(url: str) -> None:
    answer = httpx.post(f"{url}/see", files={"image": ("ok.png", PNG, "image/png")}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["sha256"] == sha(PNG)


# -- the three forms ---------------------------------------------------------------------


@needs_curl
def test_curl_form_uploads_land_in_one_batch(app_url, tmp_path):
    pictures = []
    for i in range(6):
        picture = tmp_path / f"cat{i}.png"
        picture.write_bytes(PNG + bytes([i]) * (i * 1000))
        pictures.append(picture)
    files.BATCHES.clear()
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda p: curl("-F", f"image=@{p}", "-F", f"note={p.name}", f"{app_url}/see"),
                pictures,
            )
        )
    for picture, (status, body) in zip(pictures, answers, strict=True):
        assert status == 200, body
        seen = json.loads(body)
        assert seen["sha256"] == sha(picture.read_bytes())
        assert seen["filename"] == picture.name == seen["note"]
        assert seen["content_type"] == "image/png"  # curl's guess from the name
    assert max(files.BATCHES) > 1, files.BATCHES  # several files, one predict_batch


@needs_curl
def test_curl_raw_bodies_are_the_file(app_url, tmp_path):
    picture = tmp_path / "raw.png"
    picture.write_bytes(PNG * 3)
    files.BATCHES.clear()
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: curl(
                    "--data-binary",
                    f"@{picture}",
                    "-H",
                    "content-type: image/png",
                    "-H",
                    "content-disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.png",
                    f"{app_url}/see",
                ),
                range(4),
            )
        )
    for status, body in answers:
        assert status == 200, body
        seen = json.loads(body)
        assert seen["sha256"] == sha(PNG * 3) and seen["size"] == len(PNG) * 3
        assert seen["filename"] == "résumé.png"
    assert max(files.BATCHES) > 1, files.BATCHES


def test_json_data_uris_with_the_batch(app_url):
    bodies = [{"image": data_uri(PNG + bytes([i])), "note": str(i)} for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda b: httpx.post(f"{app_url}/see", json=b), bodies))
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.json()["sha256"] == sha(PNG + bytes([i]))
        assert answer.json()["note"] == str(i)


def test_a_form_with_lists_and_fields(app_url):
    answer = httpx.post(
        f"{app_url}/album",
        files=[
            ("photos", ("a.png", PNG, "image/png")),
            ("photos", ("b.png", PNG[:100], "image/png")),
            ("cover", ("cover.bin", b"\x00" * 9, "application/octet-stream")),
        ],
        data={"title": "trip", "tags": ["sea", "sun"], "year": "2026"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "title": "trip",
        "tags": ["sea", "sun"],  # one part per member
        "year": 2026,
        "sizes": [len(PNG), 100],
        "names": ["a.png", "b.png"],
        "cover": 9,
    }
    as_json = httpx.post(
        f"{app_url}/album",
        files=[("photos", ("a.png", PNG, "image/png"))],
        data={"title": "t", "tags": '["one", "two"]'},  # or one part holding a JSON array
    )
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["tags"] == ["one", "two"]


def test_a_stream_takes_a_file_and_sends_files_as_data_uris(app_url):
    text = b"abcdefghij"
    answer = httpx.post(
        f"{app_url}/pieces", files={"doc": ("d.txt", text, "text/plain")}, data={"pieces": "2"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(x[6:]) for x in answer.text.splitlines() if x.startswith("data: ")]
    assert [e["index"] for e in events] == [0, 1]
    assert [e["part"] for e in events] == [
        data_uri(b"abcde", "text/plain"),
        data_uri(b"fghij", "text/plain"),
    ]
    raw = httpx.post(
        f"{app_url}/pieces",
        content=text,
        headers={"content-type": "text/plain", "accept": "application/x-ndjson"},
    )
    assert raw.status_code == 200, raw.text
    lines = [json.loads(x) for x in raw.text.splitlines()]
    assert b"".join(base64.b64decode(x["part"].split(",")[1]) for x in lines) == text


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """A web site on 127.0.0.1 with a picture and a page."""

    async def picture(request: StarletteRequest) -> Response:
        return Response(PNG, media_type="image/png")

    async def big(request: StarletteRequest) -> Response:
        return Response(PNG * 8, media_type="image/png")

    async def page(request: StarletteRequest) -> Response:
        return Response(b"<html></html>", media_type="text/html")

    routes = [Route("/cat.png", picture), Route("/big.png", big), Route("/page", page)]
    with ThreadedServer(Starlette(routes=routes)) as served:
        yield served.url


@pytest.mark.parametrize("service", [Fetcher, GuardedFetcher])
def test_a_file_url_is_fetched_before_predict(site, service):
    with ThreadedServer(service.asgi_app()) as served:
        wait_ready(served.url)
        url = f"{served.url}/fetch"
        by_json = httpx.post(url, json={"image": f"{site}/cat.png"}, timeout=30)
        by_form = httpx.post(  # a text part holding the URL
            url,
            content=form([("image", None, f"{site}/cat.png".encode(), None)]),
            headers={"content-type": "multipart/form-data; boundary=b0und"},
            timeout=30,
        )
        if service is GuardedFetcher:  # 127.0.0.1 is private: refused unless allowed
            assert "could not fetch" in refusal(by_json, 422, "fetch_failed")
            refusal(by_form, 422, "fetch_failed")
            return
        for answer in (by_json, by_form):
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "size": len(PNG),
                "content_type": "image/png",
                "filename": "cat.png",
                "sha256": sha(PNG),
            }
        too_big = httpx.post(url, json={"image": f"{site}/big.png"}, timeout=30)
        refusal(too_big, 413, "file_too_large")
        a_page = httpx.post(url, json={"image": f"{site}/page"}, timeout=30)
        refusal(a_page, 415, "unsupported_media_type")


def test_the_files_of_one_request_given_by_url_are_bounded_together(site):
    assert len(PNG) * 4 < 4500 < len(PNG) * 5  # four fit in max_body_bytes, five do not
    with ThreadedServer(ManyFetcher.asgi_app()) as served:
        wait_ready(served.url)
        url = f"{served.url}/fetch"
        four = httpx.post(url, json={"images": [f"{site}/cat.png"] * 4}, timeout=30)
        assert four.status_code == 200 and four.json() == {"sizes": [len(PNG)] * 4}
        five = httpx.post(url, json={"images": [f"{site}/cat.png"] * 5}, timeout=30)
        refusal(five, 413, "file_too_large")
        many = httpx.post(url, json={"images": [f"{site}/cat.png"] * 65}, timeout=30)
        assert "at most 64" in refusal(many, 422, "fetch_failed")


# -- file answers --------------------------------------------------------------------------


def test_a_file_answer_is_the_bytes_with_its_headers(thumb_url):
    answer = httpx.post(
        f"{thumb_url}/thumb", files={"image": ("résumé.png", PNG, "image/png")}, data={"times": "2"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.content == PNG[::-1] * 2
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["content-length"] == str(2 * len(PNG))
    assert answer.headers["content-disposition"] == (
        "inline; filename=\"thumb-r_sum_.png\"; filename*=UTF-8''thumb-r%C3%A9sum%C3%A9.png"
    )
    assert answer.headers["x-request-id"]


@needs_curl
def test_a_large_file_answer_is_streamed_whole(thumb_url, tmp_path):
    picture, out = tmp_path / "x.png", tmp_path / "large.png"
    picture.write_bytes(PNG)
    status, _ = curl(
        "-F", f"image=@{picture}", "-F", "size=large", "-o", str(out), f"{thumb_url}/thumb"
    )
    assert status == 200
    assert out.read_bytes() == bytes(range(256)) * 4096 * 3
    answer = httpx.post(
        f"{thumb_url}/thumb", files={"image": ("x.png", PNG, "image/png")}, data={"size": "large"}
    )
    assert answer.status_code == 200
    assert answer.headers["content-length"] == str(3 * MiB) == str(len(answer.content))
    assert answer.headers["content-disposition"] == 'inline; filename="thumb-x.png"'


def test_a_json_request_gets_the_file_answer_too(thumb_url):
    answer = httpx.post(f"{thumb_url}/thumb", json={"image": data_uri(b"\x01\x02")})
    assert answer.status_code == 200
    assert answer.content == b"\x02\x01"
    assert "content-disposition" in answer.headers  # "thumb-image"


# -- refusals ------------------------------------------------------------------------------


def refusal(answer: httpx.Response, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == code and body["request_id"] == answer.headers["x-request-id"]
    return str(body["detail"])


def test_file_limits_answer_413_and_415_in_every_form(app_url):
    big = b"\x89PNG" + b"x" * 5000
    for answer in (
        httpx.post(
            f"{app_url}/album", files={"photos": ("a.png", big, "image/png")}, data={"title": "t"}
        ),
        httpx.post(f"{app_url}/album", json={"photos": [data_uri(big)], "title": "t"}),
    ):
        assert "4096" in refusal(answer, 413, "file_too_large")
    for answer in (
        httpx.post(
            f"{app_url}/album", files={"photos": ("a.jpg", PNG, "image/jpeg")}, data={"title": "t"}
        ),
        httpx.post(
            f"{app_url}/album", json={"photos": [data_uri(PNG, "image/jpeg")], "title": "t"}
        ),
        httpx.post(f"{app_url}/see", content=PNG, headers={"content-type": "text/plain"}),
    ):
        refusal(answer, 415, "unsupported_media_type")
    # curl --data-binary without -H content-type sends a form type: the hint says what to do
    said = refusal(
        httpx.post(
            f"{app_url}/see",
            content=PNG,
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        415,
        "unsupported_media_type",
    )
    assert "content-type: image/png" in said
    # a route whose model is more than one file takes no raw body
    said = refusal(
        httpx.post(f"{app_url}/album", content=PNG, headers={"content-type": "image/png"}),
        415,
        "unsupported_media_type",
    )
    assert "application/json or multipart/form-data" in said
    still_serving(app_url)


def test_a_raw_file_over_its_limit_is_refused_before_it_is_read(app_url):
    status, body = exchange(app_url, post_head("/see", "image/png", 31 * MiB), PNG)
    assert (status, body["code"]) == (413, "file_too_large")
    status, body = exchange(app_url, post_head("/see", "image/png", 41 * MiB), PNG)
    assert (status, body["code"]) == (413, "body_too_large")
    still_serving(app_url)


def test_a_chunked_form_over_the_body_limit_is_413(app_url):
    part = form([("photos", "a.png", b"x" * (300 * 1024), "image/png")])
    chunked = f"{len(part):x}\r\n".encode() + part + b"\r\n0\r\n\r\n"
    status, body = exchange(
        app_url, post_head("/album", "multipart/form-data; boundary=b0und"), chunked
    )
    assert (status, body["code"]) == (413, "body_too_large")
    still_serving(app_url)


@pytest.mark.parametrize(
    ("case", "content_type", "body"),
    [
        ("no boundary", "multipart/form-data", form([("title", None, b"t", None)])),
        ("broken", "multipart/form-data; boundary=b0und", b"--b0und\r\nnot a header line\r\n\r\nx"),
        (
            "too many files",
            "multipart/form-data; boundary=b0und",
            form([("photos", f"{i}.png", PNG, "image/png") for i in range(70)]),
        ),
        (
            "too many fields",
            "multipart/form-data; boundary=b0und",
            form([("tags", None, b"t", None) for _ in range(200)]),
        ),
        (
            "a header line over 4 KiB",
            "multipart/form-data; boundary=b0und",
            form([("photos", "a" * 5000 + ".png", PNG, "image/png")]),
        ),
        (
            "too many headers",
            "multipart/form-data; boundary=b0und",
            b"--b0und\r\n"
            + b"".join(f"X-H{i}: v\r\n".encode() for i in range(9))
            + b'Content-Disposition: form-data; name="title"\r\n\r\nt\r\n--b0und--\r\n',
        ),
        (
            "no name",
            "multipart/form-data; boundary=b0und",
            form([("", None, b"t", None)]).replace(b'; name=""', b""),
        ),
    ],
)
def test_a_malformed_form_is_400(app_url, case, content_type, body):
    answer = httpx.post(f"{app_url}/album", content=body, headers={"content-type": content_type})
    refusal(answer, 400, "malformed_upload")
    still_serving(app_url)


@pytest.mark.parametrize(
    ("parts", "where", "said"),
    [
        (
            [
                ("photos", "a.png", PNG, "image/png"),
                ("title", None, b"t", None),
                ("extra", None, b"x", None),
            ],
            "extra",
            "not a field",
        ),
        (
            [("photos", "a.png", PNG, "image/png"), ("title", "t.txt", b"t", "text/plain")],
            "title",
            "not a file field",
        ),
        (
            [
                ("cover", "a", b"1", None),
                ("cover", "b", b"2", None),
                ("photos", "a.png", PNG, "image/png"),
                ("title", None, b"t", None),
            ],
            "cover",
            "one file",
        ),
        (
            [
                ("photos", "a.png", PNG, "image/png"),
                ("title", None, b"t", None),
                ("title", None, b"u", None),
            ],
            "title",
            "more than once",
        ),
        (
            [
                ("photos", "a.png", PNG, "image/png"),
                ("year", None, b"soon", None),
                ("title", None, b"t", None),
            ],
            "year",
            "integer",
        ),
        ([("title", None, b"t", None)], "photos", "Field required"),
    ],
)
def test_a_form_that_does_not_fit_the_model_is_422(app_url, parts, where, said):
    answer = httpx.post(
        f"{app_url}/album",
        content=form(parts),
        headers={"content-type": "multipart/form-data; boundary=b0und"},
    )
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == "validation_failed"
    (error,) = [e for e in body["detail"] if e["loc"][:2] == ["body", where]]
    assert said in error["msg"]
    still_serving(app_url)


def test_an_empty_raw_body_is_a_missing_file(app_url):
    answer = httpx.post(f"{app_url}/see", content=b"")
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "image"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=b0und", form([("image", "a.png", PNG, "image/png")])),
        ("image/png", PNG),
        ("application/json", json.dumps({"image": data_uri(PNG)}).encode()),
    ],
)
def test_a_slow_upload_is_408(app_url, content_type, body):
    # Seer's upload_timeout is 2 s; a byte every 50 ms takes far longer for these bodies
    status, answer = exchange(
        app_url, post_head("/see", content_type, len(body)), body, trickle=0.05
    )
    assert (status, answer["code"]) == (408, "upload_timeout")
    assert "upload_timeout" in answer["detail"]
    still_serving(app_url)


# -- a router in an app with dependencies and keys ---------------------------------------


def test_a_form_passes_the_routers_dependencies_and_keys(app_url):
    url = f"{app_url}/ml/album"
    photo = {"photos": ("a.png", PNG, "image/png")}
    TEAMS.clear()
    # the router's dependencies run first (FastAPI's order), then the route's: the key
    no_key = httpx.post(url, files=photo, data={"title": "t"}, headers={"x-team": "blue"})
    refusal(no_key, 401, "unauthorized")
    no_team = httpx.post(url, files=photo, data={"title": "t"}, headers={"x-api-key": KEY})
    refusal(no_team, 403, "refused")
    ok = httpx.post(
        url, files=photo, data={"title": "t"}, headers={"x-api-key": KEY, "x-team": "red"}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["sizes"] == [len(PNG)]
    assert TEAMS == ["blue", "red"]
    # JSON takes FastAPI's own way here (the user's dependency); a file's 413 is still a 413
    too_big = httpx.post(
        url,
        json={"photos": [data_uri(b"x" * 5000)], "title": "t"},
        headers={"x-api-key": KEY, "x-team": "red"},
    )
    refusal(too_big, 413, "file_too_large")
    assert httpx.get(f"{app_url}/own").json() == {"own": "route"}


def test_the_fastapi_internals_the_upload_call_rests_on():
    """solve_dependencies' keywords, FastAPI's request stacks and its merged-route context
    variable: if a FastAPI release changes them, this says so first."""
    params = inspect.signature(solve_dependencies).parameters
    for name in (
        "request",
        "dependant",
        "body",
        "dependency_overrides_provider",
        "async_exit_stack",
        "embed_body_fields",
    ):
        assert name in params, name
    import fastapi.routing

    assert isinstance(fastapi.routing._effective_route_context_var, ContextVar)
    source = inspect.getsource(fastapi.routing.request_response)
    assert (
        'scope["fastapi_inner_astack"]' in source and 'scope["fastapi_function_astack"]' in source
    )
    (route,) = [r for r in Album.router().routes if isinstance(r, KitRoute) and r.path == "/album"]
    assert upload_call(route) is not None


# -- the OpenAPI document ------------------------------------------------------------------


def test_openapi_describes_forms_raw_bodies_and_file_answers(app_url, thumb_url):
    doc = httpx.get(f"{app_url}/openapi.json").json()
    validate(doc)
    see = doc["paths"]["/see"]["post"]
    content = see["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Photo"}
    multipart = content["multipart/form-data"]["schema"]
    assert multipart["properties"]["image"]["format"] == "binary"
    assert multipart["required"] == ["image"]
    assert content["image/*"]["schema"]["format"] == "binary"  # the raw body
    for status in ("400", "408", "413", "415"):
        assert status in see["responses"], status
    album = doc["paths"]["/album"]["post"]["requestBody"]["content"]
    assert "image/png" not in album  # no raw body: two required fields
    props = album["multipart/form-data"]["schema"]["properties"]
    assert props["photos"]["type"] == "array" and props["photos"]["items"]["format"] == "binary"
    assert props["tags"]["type"] == "array" and props["year"]["type"] == "integer"
    assert props["cover"]["format"] == "binary"
    thumbs = httpx.get(f"{thumb_url}/openapi.json").json()
    validate(thumbs)
    ok = thumbs["paths"]["/thumb"]["post"]["responses"]["200"]
    assert ok["content"] == {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    assert httpx.get(f"{thumb_url}/docs").status_code == 200


# -- memory, temporary files, clients that leave ------------------------------------------


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


def _temp_fds(pid: int, tmp: Path) -> list[str]:
    """The server's open files in its temporary folder (spooled uploads, deleted or not)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(tmp)):
            found.append(target)
    return found


@needs_curl
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_large_uploads_are_spooled_and_leave_nothing_behind(tmp_path):
    spool = tmp_path / "tmp"
    spool.mkdir()
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(20 * MiB))
    small = tmp_path / "small.png"
    small.write_bytes(os.urandom(MiB))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = [str(BIN / "mfk"), "serve", "tests/services/files.py:Seer", "--port", str(port)]
    with running(serve, env={"TMPDIR": str(spool)}) as server:
        wait_ready(url)
        pid = server.proc.pid
        for path in (small, small):  # warm up both forms
            assert curl("-F", f"image=@{path}", f"{url}/see")[0] == 200
            assert (
                curl("--data-binary", f"@{path}", "-H", "content-type: image/png", f"{url}/see")[0]
                == 200
            )
        before = _status(pid, "VmHWM")
        status, body = curl("-F", f"image=@{big}", f"{url}/see")
        assert status == 200 and json.loads(body)["sha256"] == sha(big.read_bytes())
        status, body = curl(
            "--data-binary", f"@{big}", "-H", "content-type: image/png", f"{url}/see"
        )
        assert status == 200 and json.loads(body)["size"] == 20 * MiB
        grown = _status(pid, "VmHWM") - before
        print(f"peak RSS {before / MiB:.1f} MiB, grown {grown / MiB:.2f} MiB")
        assert grown < 8 * MiB, f"the server's peak RSS grew {grown / MiB:.1f} MiB for 20 MiB files"
        # a client that leaves halfway through a raw and a multipart body
        for content_type in ("image/png", "multipart/form-data; boundary=b0und"):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(post_head("/see", content_type, 20 * MiB))
                sock.sendall(form([("image", "a.png", b"x" * 3 * MiB, "image/png")])[:-20])
                deadline = time.monotonic() + 10
                while not _temp_fds(pid, spool):  # spooled to disk by now
                    assert time.monotonic() < deadline, "the upload never reached the disk"
                    time.sleep(0.05)
        deadline = time.monotonic() + 10
        while _temp_fds(pid, spool) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _temp_fds(pid, spool) == []
        assert list(spool.iterdir()) == []  # File.path's copies are gone with their answers
        assert curl("-F", f"image=@{small}", f"{url}/see")[0] == 200


@needs_curl
def test_a_spooled_upload_holds_a_file_open_only_while_it_is_answered(tmp_path):
    """The same, in numbers of descriptors: a stream that is still being answered holds its
    upload; when it ends, the upload is closed."""
    spool = tmp_path / "tmp"
    spool.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"y" * (2 * MiB))  # past the 1 MiB kept in memory
    serve = [str(BIN / "mfk"), "serve", "tests/services/files.py:Pieces", "--port", str(port)]
    with running(serve, env={"TMPDIR": str(spool)}) as server:
        wait_ready(url)
        status, body = curl("-F", f"doc=@{doc}", "-F", "pieces=4", f"{url}/pieces")
        assert status == 200 and body.count("data: ") == 4
        assert _temp_fds(server.proc.pid, spool) == []
