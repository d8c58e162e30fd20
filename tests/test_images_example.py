"""examples/images.py: `mfk serve` on 127.0.0.1, called with curl (a form part and the raw
body), JSON with a data: URI and the typed client. Every thumbnail is compared, pixel for
pixel, with one recomputed here from Pillow's grayscale and numpy."""

from __future__ import annotations

import asyncio
import io
import math
import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from examples.images import MAX_BYTES, MAX_PIXELS, ImageIn, Images
from modal_fastapi_kit import File
from modal_fastapi_kit.exceptions import ErrorCode, InputError

from ._servers import BIN, free_port, running, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# The filters, written out again: 3x3 kernel, divisor (rounded half up), absolute value.
KERNELS = {
    "none": ([[0, 0, 0], [0, 1, 0], [0, 0, 0]], 1, False),
    "blur": ([[1, 1, 1], [1, 1, 1], [1, 1, 1]], 9, False),
    "sharpen": ([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], 1, False),
    "edges": ([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], 1, True),
}

TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}


def expected(data: bytes, size: int = 128, filter: str = "none") -> np.ndarray:
    """The thumbnail of the picture in ``data``: Pillow's gray, shrunk by the smallest whole
    factor that fits ``size`` (rounded block means), filtered with zeros around the edge."""
    gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.int64)
    height, width = gray.shape
    k = math.ceil(max(height, width) / size)
    h, w = height // k, width // k
    blocks = gray[: h * k, : w * k].reshape(h, k, w, k).sum(axis=(1, 3))
    small = (blocks + k * k // 2) // (k * k)
    kernel, divisor, absolute = KERNELS[filter]
    padded = np.pad(small, 1)
    total = sum(kernel[y][x] * padded[y : y + h, x : x + w] for y in range(3) for x in range(3))
    total = np.abs(total) if absolute else total
    return np.clip((total + divisor // 2) // divisor, 0, 255).astype(np.uint8)


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as answer:
        assert (answer.format, answer.mode) == ("PNG", "L")
        return np.asarray(answer)


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A colour picture with gradients, edges and noise (so every filter changes it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, ((x // 17 + y // 13) % 2) * 200], -1)
    rgb = rgb + rng.integers(0, 40, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` (8-bit gray) and holds no rows: what a
    decompression bomb looks like until it is decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("images")
    made = {
        "cat.png": encoded(picture(300, 200, 1), "PNG"),
        "cat.jpg": encoded(picture(517, 389, 2), "JPEG", quality=85),
        "cat.webp": encoded(picture(96, 160, 3), "WEBP", quality=80),
        "small.png": encoded(picture(40, 30, 4), "PNG"),
        "bad.png": b"\x89PNG\r\n\x1a\n but not really a PNG",
        "bomb.png": png_header_only(6000, 6000),
        "huge.png": png_header_only(30_000, 30_000),
        "notes.txt": b"not a picture",
    }
    for name, data in made.items():
        (where / name).write_bytes(data)
    return {name: where / name for name in made}


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    port = free_port()
    with running([str(BIN / "mfk"), "serve", "examples/images.py", "--port", str(port)]) as p:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=120)
        yield url
    assert "Traceback" not in p.output, p.output


def curl(*args: str) -> tuple[str, str]:
    """Run curl; its ``status content-type`` line and its stderr."""
    done = subprocess.run(
        ["curl", "-sS", "-w", "%{http_code} %{content_type}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def test_the_model_in_process_matches_numpy_batch_and_all(files):
    server = Images()
    server.load()
    options = [(128, "none"), (64, "edges"), (33, "blur"), (200, "sharpen"), (7, "edges")]
    names = ["cat.png", "cat.jpg", "cat.webp", "small.png", "cat.png"]
    items = [
        ImageIn(image=File.from_path(files[name]), size=size, filter=kind)
        for name, (size, kind) in zip(names, options, strict=True)
    ]
    answers = server.predict_batch([*items, ImageIn(image=File.from_path(files["bad.png"]))])
    for name, (size, kind), answer in zip(names, options, answers[:-1], strict=True):
        assert isinstance(answer, File) and answer.content_type == "image/png"
        want = expected(files[name].read_bytes(), size, kind)
        assert max(want.shape) <= size
        np.testing.assert_array_equal(pixels(answer.read()), want)
    assert isinstance(answers[-1], InputError) and answers[-1].status_code == 422


def test_curl_form_part_with_options(base, files, tmp_path):
    out = tmp_path / "out.png"
    status, _ = curl(
        "-F", f"image=@{files['cat.png']}", "-F", "size=64", "-F", "filter=edges",
        f"{base}/thumbnail", "-o", str(out),
    )  # fmt: skip
    assert status == "200 image/png"
    np.testing.assert_array_equal(
        pixels(out.read_bytes()), expected(files["cat.png"].read_bytes(), 64, "edges")
    )


def test_curl_raw_body_takes_the_defaults(base, files, tmp_path):
    out = tmp_path / "out.png"
    status, _ = curl(
        "--data-binary", f"@{files['cat.jpg']}", "-H", "content-type: image/jpeg",
        f"{base}/thumbnail", "-o", str(out),
    )  # fmt: skip
    assert status == "200 image/png"
    got = pixels(out.read_bytes())
    assert got.shape == (77, 103)  # 517x389 shrunk by 5 (by 4, 129 wide, it would not fit)
    np.testing.assert_array_equal(got, expected(files["cat.jpg"].read_bytes()))


def test_json_with_a_data_uri(base, files):
    uri = File.from_path(files["cat.webp"]).data_uri()
    assert uri.startswith("data:image/webp;base64,")
    response = httpx.post(
        f"{base}/thumbnail", json={"image": uri, "size": 50, "filter": "sharpen"}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    want = expected(files["cat.webp"].read_bytes(), 50, "sharpen")
    np.testing.assert_array_equal(pixels(response.content), want)


def test_the_typed_client_sends_a_file_and_gets_one_back(base, files):
    with Images.client(base) as client:
        answer = client.predict(ImageIn(image=File.from_path(files["cat.png"]), size=48))
        assert isinstance(answer, File) and answer.content_type == "image/png"
        np.testing.assert_array_equal(
            pixels(answer.read()), expected(files["cat.png"].read_bytes(), 48)
        )
        in_memory = File(files["small.png"].read_bytes(), content_type="image/png")
        blurred = client.predict(ImageIn(image=in_memory, filter="blur"))
        np.testing.assert_array_equal(
            pixels(blurred.read()), expected(files["small.png"].read_bytes(), 128, "blur")
        )
        with pytest.raises(InputError) as refused:
            client.predict(ImageIn(image=File.from_path(files["bad.png"])))
        assert refused.value.code == ErrorCode.INVALID_INPUT


def batch_counts(base: str) -> tuple[float, float]:
    """(batches run, items in them) of the service so far, from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = {
        kind: float(value)
        for kind, value in re.findall(
            r'^mfk_batch_size_(count|sum)\{service="images-api"\} (\S+)$', text, flags=re.M
        )
    }
    return found["count"], found["sum"]


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(base, files):
    names = ["cat.png", "cat.jpg", "cat.webp", "small.png"]
    kinds = list(KERNELS)
    jobs = [(names[i % 4], kinds[i % 3 if i % 4 else 3], 20 + 7 * i) for i in range(24)]
    data = {name: files[name].read_bytes() for name in names}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/thumbnail",
                        files={"image": (name, data[name], TYPES[Path(name).suffix])},
                        data={"size": str(size), "filter": kind},
                    )
                    for name, kind, size in jobs
                ),
                client.post("/thumbnail", files={"image": ("bad.png", b"nope", "image/png")}),
            )

    shared = False
    for _ in range(5):  # the first request of a burst finds the model idle and goes alone
        before = batch_counts(base)
        *answers, bad = asyncio.run(burst())
        after = batch_counts(base)
        for (name, kind, size), answer in zip(jobs, answers, strict=True):
            assert answer.status_code == 200, answer.text
            np.testing.assert_array_equal(pixels(answer.content), expected(data[name], size, kind))
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
        batches, items = after[0] - before[0], after[1] - before[1]
        assert items == len(jobs) + 1
        if batches < items:
            shared = True
            break
    assert shared, "every request of five bursts of 25 ran in a batch of its own"


@pytest.mark.parametrize(
    ("name", "content_type", "status", "code", "said"),
    [
        ("bad.png", "image/png", 422, "invalid_input", "not a readable PNG, JPEG or WebP"),
        ("bomb.png", "image/png", 422, "invalid_input", f"at most {MAX_PIXELS}"),
        ("huge.png", "image/png", 422, "invalid_input", "too many pixels"),
        ("notes.txt", "text/plain", 415, "unsupported_media_type", "image/png"),
    ],
)
def test_refused_pictures(base, files, name, content_type, status, code, said):
    for send in (
        {"files": {"image": (name, files[name].read_bytes(), content_type)}},
        {"content": files[name].read_bytes(), "headers": {"content-type": content_type}},
    ):
        response = httpx.post(f"{base}/thumbnail", timeout=30, **send)  # type: ignore[arg-type]
        assert response.status_code == status, response.text
        body = response.json()
        assert body["code"] == code and said in body["detail"], body
        assert body["request_id"] == response.headers["x-request-id"]


def test_a_picture_over_max_bytes_is_413(base):
    too_big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES)
    form = httpx.post(
        f"{base}/thumbnail", files={"image": ("big.png", too_big, "image/png")}, timeout=60
    )
    raw = httpx.post(
        f"{base}/thumbnail", content=too_big, headers={"content-type": "image/png"}, timeout=60
    )
    for response in (form, raw):
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "file_too_large"
        assert str(MAX_BYTES) in response.json()["detail"]
