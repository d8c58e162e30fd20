"""Image thumbnails: a picture in, a grayscale PNG out, shrunk and filtered with torch.

    mfk serve examples/images.py                     # local, http://127.0.0.1:8000/docs
    curl -F image=@cat.png -F size=64 -F filter=edges localhost:8000/thumbnail -o out.png
    curl --data-binary @cat.jpg -H 'content-type: image/jpeg' localhost:8000/thumbnail -o out.png

A request is a PNG, JPEG or WebP (a ``multipart/form-data`` part, the raw body, or a
``data:`` URI in JSON) and two options beside it: ``size``, the square the thumbnail must fit,
and ``filter``, a 3x3 filter applied after shrinking. The answer is the PNG itself.

Each picture becomes gray (ITU-R 601-2 luma, in integers as Pillow's ``convert("L")`` does it),
then shrinks by the smallest whole factor ``k`` that makes its longer side fit ``size``, each
output pixel the rounded mean of a k x k block. The filters of a whole batch then run as one
grouped convolution over the thumbnails padded to one size: every item its own kernel.
All of it is integer arithmetic (the convolution's sums are whole numbers well within float32
and are rounded), so the answer is exact on any device and a test can recompute it with numpy.

A file Pillow cannot read, or one with more pixels than ``MAX_PIXELS`` (a decompression bomb:
a few kilobytes of PNG that would decode to gigabytes), fails alone with a 422; the others in
its batch are answered.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from modal_fastapi_kit import File, FileLimits, InputError, ModelServer, gpu_service

MAX_BYTES = 8 * 2**20  # the largest picture accepted (413 file_too_large above it)
MAX_PIXELS = 25_000_000  # the most pixels a picture may decode to (5000 x 5000)
FORMATS = ("PNG", "JPEG", "WEBP")  # what Pillow is allowed to decode
# Each filter: a 3x3 integer kernel, the divisor of its sum (rounded half up), and whether the
# sum's absolute value is taken; the result is clamped to 0..255.
FILTERS: dict[str, tuple[tuple[tuple[int, ...], ...], int, bool]] = {
    "none": (((0, 0, 0), (0, 1, 0), (0, 0, 0)), 1, False),
    "blur": (((1, 1, 1), (1, 1, 1), (1, 1, 1)), 9, False),
    "sharpen": (((0, -1, 0), (-1, 5, -1), (0, -1, 0)), 1, False),
    "edges": (((0, -1, 0), (-1, 4, -1), (0, -1, 0)), 1, True),
}
Filter = Literal["none", "blur", "sharpen", "edges"]


class ImageIn(BaseModel):
    image: Annotated[
        File,
        FileLimits(max_bytes=MAX_BYTES, content_types=("image/png", "image/jpeg", "image/webp")),
    ]
    size: int = Field(default=128, ge=1, le=1024, description="the square the thumbnail fits")
    filter: Filter = Field(default="none", description="a 3x3 filter applied after shrinking")


@gpu_service(
    name="images-api",
    gpu="T4",
    packages=["torch==2.13.0", "numpy", "pillow>=10"],
    route="/thumbnail",
    max_batch_size=16,
    wait_ms=5,
    max_containers=2,
)
class Images(ModelServer[ImageIn, File]):
    """Grayscale thumbnails with a 3x3 filter, batched on the GPU."""

    def load(self) -> None:
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.kernels = {
            name: torch.tensor(kernel, dtype=torch.float32, device=self.device)
            for name, (kernel, _, _) in FILTERS.items()
        }

    def warmup(self) -> None:
        self.predict_batch([ImageIn(image=File(_blank_png(), content_type="image/png"))])

    def predict_batch(self, items: list[ImageIn]) -> list[File | InputError]:
        torch = self.torch
        thumbnails: list[Any] = []
        for item in items:
            try:
                thumbnails.append(self.thumbnail(item))
            except InputError as error:  # this item alone fails; the batch goes on
                thumbnails.append(error)
        good = [i for i, t in enumerate(thumbnails) if not isinstance(t, InputError)]
        if not good:
            return thumbnails
        height = max(thumbnails[i].shape[0] for i in good)
        width = max(thumbnails[i].shape[1] for i in good)
        # One (1, n, H+2, W+2) stack, zero-padded (a 1-pixel border and up to the largest
        # thumbnail): a grouped convolution gives every thumbnail its own kernel at once.
        stack = torch.zeros((1, len(good), height + 2, width + 2), device=self.device)
        for row, i in enumerate(good):
            h, w = thumbnails[i].shape
            stack[0, row, 1 : h + 1, 1 : w + 1] = thumbnails[i]
        weights = torch.stack([self.kernels[items[i].filter] for i in good]).unsqueeze(1)
        with torch.inference_mode():
            sums = torch.nn.functional.conv2d(stack, weights, groups=len(good))[0]
        sums = sums.round().to(torch.int32)
        for row, i in enumerate(good):
            h, w = thumbnails[i].shape
            _, divisor, absolute = FILTERS[items[i].filter]
            values = sums[row, :h, :w]
            values = values.abs() if absolute else values
            values = torch.div(values + divisor // 2, divisor, rounding_mode="floor")
            thumbnails[i] = _png(values.clamp(0, 255).to(torch.uint8).cpu().numpy())
        return thumbnails

    def thumbnail(self, item: ImageIn) -> Any:
        """The item's picture, gray and shrunk to fit ``item.size``: int32 (h, w) on the
        device."""
        torch = self.torch
        rgb = torch.from_numpy(_decode(item.image)).to(self.device)
        gray = rgb[..., 0].to(torch.int32) * 19595  # Pillow's convert("L"), in integers
        gray += rgb[..., 1].to(torch.int32) * 38470
        gray += rgb[..., 2].to(torch.int32) * 7471
        gray = (gray + 0x8000) >> 16
        height, width = gray.shape
        k = math.ceil(max(height, width) / item.size)
        if min(height, width) < k:
            raise InputError(
                f"the image is {width}x{height}: shrunk to fit {item.size}x{item.size} (by "
                f"{k}), its shorter side would vanish; send a less elongated image or a "
                "larger size"
            )
        if k == 1:
            return gray
        h, w = height // k, width // k
        blocks = gray[: h * k, : w * k].reshape(h, k, w, k).sum(dim=(1, 3))  # int64 sums
        return torch.div(blocks + k * k // 2, k * k, rounding_mode="floor")


def _decode(file: File) -> Any:
    """The picture in ``file`` as an RGB uint8 array (h, w, 3), or the InputError it earns."""
    import numpy
    from PIL import Image, UnidentifiedImageError

    with file.open() as reader:
        try:
            with warnings.catch_warnings():
                # Pillow warns above its own pixel limit and raises above twice it.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                picture = Image.open(reader, formats=FORMATS)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise InputError(
                f"the image has too many pixels ({exc}); this service takes at most "
                f"{MAX_PIXELS} (5000x5000): send a smaller image"
            ) from None
        except UnidentifiedImageError:
            raise _unreadable(file, "Pillow does not recognise it") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise _unreadable(file, str(exc)) from None
        with picture:
            width, height = picture.size
            if width * height > MAX_PIXELS:
                raise InputError(
                    f"the image is {width}x{height} = {width * height} pixels; this service "
                    f"takes at most {MAX_PIXELS} (5000x5000): send a smaller image"
                )
            try:
                return numpy.array(picture.convert("RGB"))
            except (OSError, ValueError, SyntaxError) as exc:  # a truncated or corrupt body
                raise _unreadable(file, str(exc)) from None


def _unreadable(file: File, why: str) -> InputError:
    return InputError(
        f"the file ({file.size} bytes, {file.content_type}) is not a readable PNG, JPEG or "
        f"WebP image ({why}); send one of those"
    )


def _png(pixels: Any) -> File:
    """A grayscale uint8 array (h, w) as a PNG file."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return File(out.getvalue(), content_type="image/png", filename="thumbnail.png")


def _blank_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="PNG")
    return out.getvalue()


# `modal deploy examples/images.py` (or `mfk deploy examples/images.py`) publishes this.
app = Images.modal_app()
