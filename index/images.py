"""Decode one product image, with limits, into an RGB PIL image; preprocess to a fixed square.

In:  JPEG, PNG or WebP as `bytes`, a local path (`str` or `Path`) or a `file://` URI.
Out: `load_image` -> PIL RGB image; `square_tensor` -> (3, S, S) float32 in [-1, 1].

Every failure is an `ImageError` with a short machine-readable `reason` (for dead-letter records)
and raised for that one image only; callers that embed a batch keep going with the others.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

ImageSource = bytes | bytearray | memoryview | str | Path
FORMATS = ("JPEG", "PNG", "WEBP")
REASONS = ("empty", "too_large", "corrupt", "unsupported_format", "not_found", "unsupported_source")


class ImageError(ValueError):
    """One image could not be used. `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    """Bounds checked before any pixel is decoded."""

    max_bytes: int = 20 * 1024 * 1024  # encoded size
    max_pixels: int = 40_000_000  # width * height, read from the header

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"ImageLimits.max_bytes must be > 0, got {self.max_bytes}")
        if self.max_pixels <= 0:
            raise ValueError(f"ImageLimits.max_pixels must be > 0, got {self.max_pixels}")


def read_source(source: ImageSource, limits: ImageLimits) -> bytes:
    """The encoded bytes of `source`; a path or file:// URI is read from disk after a size check."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = _local_path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError as err:
            raise ImageError("not_found", f"no file at {path}") from err
        if size > limits.max_bytes:
            raise ImageError("too_large", f"{path} has {size} bytes, limit {limits.max_bytes}")
        data = path.read_bytes()
    if not data:
        raise ImageError("empty", "zero bytes")
    if len(data) > limits.max_bytes:
        raise ImageError("too_large", f"{len(data)} bytes, limit {limits.max_bytes}")
    return data


def _local_path(source: str | Path) -> Path:
    if isinstance(source, Path):
        return source
    if "://" not in source:
        return Path(source)
    url = urlparse(source)
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        raise ImageError("unsupported_source", f"only local paths and file:// URIs, got {source[:80]!r}")
    return Path(unquote(url.path))


def load_image(source: ImageSource, limits: ImageLimits | None = None):
    """Decode `source` to an RGB PIL image; transparency is composited onto white."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    limits = limits or ImageLimits()
    data = read_source(source, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageError("too_large", f"{width}x{height} pixels, limit {limits.max_pixels}")
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError("unsupported_format", f"not a decodable {'/'.join(FORMATS)} image") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("corrupt", f"{type(err).__name__}: {err}") from err
    if width == 0 or height == 0:
        raise ImageError("empty", f"{width}x{height} pixels")
    return _to_rgb(ImageOps.exif_transpose(image))


def _to_rgb(image):
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def pad_to_square(image):
    """Centre `image` on a square canvas filled with the mean colour of its outermost pixels."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    pixels = np.asarray(image)  # (H, W, 3) uint8
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    fill = tuple(int(round(c)) for c in border.mean(axis=0))
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def square_tensor(image, size: int) -> np.ndarray:
    """RGB PIL image -> (3, size, size) float32 in [-1, 1]: pad to square, bicubic resize."""
    from PIL import Image

    square = pad_to_square(image).resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(square, dtype=np.float32) / 255.0  # (S, S, 3)
    return ((pixels - 0.5) / 0.5).transpose(2, 0, 1)
