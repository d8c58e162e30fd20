"""A real browser calls a service from a page on another origin: headless Chromium loads a page
from one 127.0.0.1 port, draws a PNG on a ``<canvas>``, uploads it with ``fetch()`` and a
``FormData`` to a service that ``mfk serve`` runs on another port with ``cors_origins``
naming the page's origin, and writes what it could read into the page. The answer, the
request id (an exposed header) and the kit's 401 body reach the page; the same page served
from an origin not listed gets nothing (the browser refuses and ``fetch`` raises a
``TypeError``)."""

from __future__ import annotations

import contextlib
import functools
import html
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ._servers import BIN, Process, free_port, running, wait_ready

CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed (make system-deps installs Debian's chromium)",
    ),
]

KEY = "browser-key-0123456789abcdef"
WIDTH, HEIGHT = 7, 5

SERVICE = """
import struct
from typing import Annotated

from pydantic import BaseModel

from modal_fastapi_kit import File, FileLimits, ModelServer, gpu_service


class PictureIn(BaseModel):
    image: Annotated[File, FileLimits(max_bytes=100_000, content_types=("image/png",))]
    label: str


class PictureOut(BaseModel):
    width: int
    height: int
    content_type: str
    png: bool
    label: str


@gpu_service(name="pictures", route="/picture", auth="api-key", cors_origins=[{origin!r}])
class Pictures(ModelServer[PictureIn, PictureOut]):
    def predict(self, item: PictureIn) -> PictureOut:
        data = item.image.read()
        width, height = struct.unpack(">II", data[16:24])  # the PNG's IHDR chunk
        return PictureOut(
            width=width,
            height=height,
            content_type=item.image.content_type,
            png=data.startswith(b"\\x89PNG\\r\\n\\x1a\\n"),
            label=item.label,
        )
"""

# The page: ?service=<base URL>&key=<API key, optional>. It writes into #answer the status, the
# X-Request-ID it could read and the JSON body, or "refused" when fetch() raises a TypeError
# (what a browser does when CORS does not let the page read the answer).
PAGE = """<!doctype html>
<html>
<body>
<pre id="answer">pending</pre>
<script>
const out = document.getElementById("answer");
const params = new URLSearchParams(location.search);

async function upload() {
  const canvas = document.createElement("canvas");
  canvas.width = %(width)d;
  canvas.height = %(height)d;
  const context = canvas.getContext("2d");
  context.fillStyle = "#c0392b";
  context.fillRect(0, 0, canvas.width, canvas.height);
  const picture = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const form = new FormData();
  form.append("image", picture, "red.png");
  form.append("label", "from " + location.origin);
  const headers = {"X-Request-ID": "page-upload-1"};
  if (params.get("key")) headers["X-API-Key"] = params.get("key");
  let response;
  try {
    response = await fetch(params.get("service") + "/picture",
                           {method: "POST", body: form, headers: headers});
  } catch (error) {
    out.textContent = error instanceof TypeError ? "refused" : "error: " + error;
    return;
  }
  out.textContent = JSON.stringify({
    status: response.status,
    request_id: response.headers.get("X-Request-ID"),
    body: await response.json(),
  });
}

upload().catch((error) => { out.textContent = "error: " + error; });
</script>
</body>
</html>
"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_site(folder: Path, port: int) -> Iterator[str]:
    """``folder`` served over HTTP on 127.0.0.1:``port`` in a thread; stopped on exit."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def page_answer(url: str, profile: Path) -> Any:
    """What the page at ``url`` wrote into #answer, as Chromium's DOM dump shows it."""
    assert CHROMIUM is not None
    dumped = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    found = re.search(r'<pre id="answer">(.*?)</pre>', dumped, flags=re.S)
    assert found is not None, dumped
    text = html.unescape(found.group(1))
    return text if text in ("pending", "refused") or text.startswith("error") else json.loads(text)


class Served:
    """The service under ``mfk serve --access-log`` and the one origin it lists."""

    def __init__(self, url: str, origin: str, server: Process) -> None:
        self.url = url
        self.origin = origin
        self.page_port = int(origin.rsplit(":", 1)[1])
        self.server = server

    def uploads(self) -> int:
        """Uploads that reached the predict route, from the access log."""
        return len(re.findall(r"POST /picture \d{3}", self.server.output))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Served]:
    """The service on one port, listing as its CORS origin a page's origin on another."""
    port, page_port = free_port(), free_port()
    origin = f"http://127.0.0.1:{page_port}"
    (tmp_path / "pictures.py").write_text(SERVICE.format(origin=origin))
    args = [str(BIN / "mfk"), "serve", str(tmp_path / "pictures.py"), "--port", str(port)]
    with running([*args, "--access-log"], env={"MFK_API_KEYS": KEY}) as server:
        served = Served(f"http://127.0.0.1:{port}", origin, server)
        wait_ready(served.url)
        yield served
        assert "Traceback" not in server.output, server.output


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "page.html").write_text(PAGE % {"width": WIDTH, "height": HEIGHT})
    return folder


def test_a_page_on_a_listed_origin_uploads_a_picture_and_reads_the_answer(service, site, tmp_path):
    origin = service.origin
    with static_site(site, service.page_port):
        page = f"{origin}/page.html?service={service.url}&key={KEY}"
        answer = page_answer(page, tmp_path / "profile")
    assert answer == {
        "status": 200,
        "request_id": "page-upload-1",
        "body": {
            "width": WIDTH,
            "height": HEIGHT,
            "content_type": "image/png",
            "png": True,
            "label": f"from {origin}",
        },
    }
    assert service.uploads() == 1


def test_a_page_on_a_listed_origin_reads_the_kits_401(service, site, tmp_path):
    with static_site(site, service.page_port):
        page = f"{service.origin}/page.html?service={service.url}"
        answer = page_answer(page, tmp_path / "profile")
    assert answer["status"] == 401
    assert answer["request_id"] == "page-upload-1"
    assert answer["body"]["code"] == "unauthorized"
    assert answer["body"]["request_id"] == "page-upload-1"


def test_the_same_page_on_an_origin_not_listed_is_refused_by_the_browser(service, site, tmp_path):
    with static_site(site, free_port()) as other:
        page = f"{other}/page.html?service={service.url}&key={KEY}"
        answer = page_answer(page, tmp_path / "profile")
    assert answer == "refused"
    # The upload sends X-API-Key, so the browser asked first; refused, it never sent the upload.
    assert service.uploads() == 0
