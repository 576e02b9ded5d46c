"""Decode one product image, with limits, into an RGB PIL image; preprocess to a fixed square.

In:  JPEG, PNG or WebP as `bytes`; a `str` from a record (a path or `file://` URI, read only inside
     `ImageLimits.base_dir`); or a `Path`, the caller's own file (offline tools, read as given).
Out: `load_image` -> PIL RGB image; `square_tensor` -> (3, S, S) float32 in [-1, 1].

Every failure is an `ImageError` with a short machine-readable `reason` (for dead-letter records)
and raised for that one image only; callers that embed a batch keep going with the others. A
`str` source is untrusted: it is resolved lexically inside `base_dir` (no `..`, no other scheme or
host), opened one component at a time without following symlinks, must be a regular file, and at
most `max_bytes + 1` bytes of it are read. Its error details never name the path or say whether
something exists outside `base_dir`.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import numpy as np

ImageSource = bytes | bytearray | memoryview | str | Path
FORMATS = ("JPEG", "PNG", "WEBP")
REASONS = ("empty", "too_large", "corrupt", "unsupported_format", "not_found", "unsupported_source", "unreadable",
           "bad_aspect_ratio")
# Longest side a decoded image keeps: larger ones are scaled down (aspect kept) right after
# decoding, before any copy, RGB conversion or padding. So a 40000x1000 image costs one decode
# buffer, and the padded square at most MAX_SIDE^2 pixels (12 MB), whatever the aspect ratio.
# Far above any encoder input (224..1024), so ordinary photos are processed exactly as before.
MAX_SIDE = 2048


class ImageError(ValueError):
    """One image could not be used. `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        detail = detail[:200]
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    """Bounds checked before any pixel is decoded, and where record-given paths may point."""

    max_bytes: int = 20 * 1024 * 1024  # encoded size
    max_pixels: int = 40_000_000  # width * height, read from the header
    # longer side / shorter side, read from the header: no product photo is a 40:1 strip, and
    # such a strip would shrink to a few pixel rows of content on the padded square anyway
    max_aspect_ratio: float = 20.0
    # The only directory a record's image_uri may name a file in (absolute; resolved once here).
    # None: records may not name local files at all.
    base_dir: str | None = None

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"ImageLimits.max_bytes must be > 0, got {self.max_bytes}")
        if self.max_pixels <= 0:
            raise ValueError(f"ImageLimits.max_pixels must be > 0, got {self.max_pixels}")
        if not self.max_aspect_ratio >= 1.0:
            raise ValueError(f"ImageLimits.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        if self.base_dir is not None:
            if not os.path.isabs(self.base_dir):
                raise ValueError(f"ImageLimits.base_dir must be an absolute path, got {self.base_dir!r}")
            object.__setattr__(self, "base_dir", os.path.realpath(self.base_dir))


def read_source(source: ImageSource, limits: ImageLimits) -> bytes:
    """The encoded bytes of `source` (a `str` is confined to `limits.base_dir`, see the module doc)."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if len(data) > limits.max_bytes:
            raise ImageError("too_large", f"{len(data)} bytes, limit {limits.max_bytes}")
    elif isinstance(source, Path):
        data = _read_trusted(source, limits.max_bytes)
    elif isinstance(source, str):
        data = _read_confined(source, limits)
    else:
        raise ImageError("unsupported_source", f"expected bytes, str or Path, got {type(source).__name__}")
    if not data:
        raise ImageError("empty", "zero bytes")
    return data


def operator_path(text: str) -> Path:
    """A command-line argument (path or file:// URI) as the operator's own file."""
    if "://" not in text:
        return Path(text)
    url = urlparse(text)
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        raise ValueError(f"only local paths and file:// URIs, got {text[:80]!r}")
    return Path(unquote(url.path))


def _read_trusted(path: Path, max_bytes: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as err:
        raise ImageError("not_found", f"no file at {str(path)[:120]}") from err
    except OSError as err:
        raise ImageError("unreadable", f"{str(path)[:120]}: {err.strerror}") from err
    return _read_regular(fd, max_bytes, f"{str(path)[:120]} is not a regular file")


def _read_confined(uri: str, limits: ImageLimits) -> bytes:
    """Read a record's path or file:// URI, only inside `limits.base_dir`."""
    if limits.base_dir is None:
        raise ImageError("unsupported_source", "this worker does not read local image files; send image_bytes")
    parts = _confined_parts(uri, limits.base_dir)
    fd = _open_beneath(limits.base_dir, parts)
    return _read_regular(fd, limits.max_bytes, "no regular file at that path in the image directory")


def _confined_parts(uri: str, base_dir: str) -> tuple[str, ...]:
    """The path components of `uri` below `base_dir`, decided without touching the file system."""
    outside = ImageError("unsupported_source", "only files inside the image directory, as a path or file:// URI")
    if "://" in uri:
        url = urlparse(uri)
        if url.scheme != "file" or url.netloc not in ("", "localhost") or url.query or url.fragment:
            raise outside
        text = unquote(url.path)
    else:
        text = uri
    if "\x00" in text or not text:
        raise outside
    path = PurePosixPath(text)
    if ".." in path.parts:
        raise outside
    if path.is_absolute():
        base = PurePosixPath(base_dir)
        if path == base or base not in path.parents:
            raise outside
        path = path.relative_to(base)
    parts = tuple(p for p in path.parts if p not in (".", ""))
    if not parts:
        raise outside
    return parts


def _open_beneath(base_dir: str, parts: tuple[str, ...]) -> int:
    """Open base_dir/parts component by component with O_NOFOLLOW, so no symlink is ever followed
    (not even one swapped in after a check). Any failure is one vague not_found."""
    missing = ImageError("not_found", "no regular file at that path in the image directory")
    try:
        fd = os.open(base_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise ImageError("not_found", "the image directory is not available") from err
    try:
        for directory in parts[:-1]:
            next_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not regular)
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except (OSError, ValueError) as err:  # ENOENT, ELOOP, ENOTDIR, EACCES, ENAMETOOLONG, ...
        raise missing from err
    finally:
        os.close(fd)


def _read_regular(fd: int, max_bytes: int, not_regular: str) -> bytes:
    """At most max_bytes + 1 bytes of an open regular file (st_size is not trusted: it may grow)."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError("not_found", not_regular)
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as err:
        if err.errno == errno.EISDIR:
            raise ImageError("not_found", not_regular) from err
        raise ImageError("unreadable", "the file could not be read") from err
    finally:
        os.close(fd)
    if total > max_bytes:
        raise ImageError("too_large", f"more than {max_bytes} bytes")
    return b"".join(chunks)


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
            if min(width, height) > 0 and max(width, height) > limits.max_aspect_ratio * min(width, height):
                raise ImageError("bad_aspect_ratio", f"{width}x{height} pixels, at most {limits.max_aspect_ratio:g}:1")
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError("unsupported_format", f"not a decodable {'/'.join(FORMATS)} image") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("corrupt", f"{type(err).__name__}: {err}") from err
    if width == 0 or height == 0:
        raise ImageError("empty", f"{width}x{height} pixels")
    image = cap_side(image)
    ImageOps.exif_transpose(image, in_place=True)
    return _to_rgb(image)


def cap_side(image, max_side: int = MAX_SIDE):
    """`image` scaled down so that its longer side is at most `max_side` (no copy when it already is)."""
    from PIL import Image

    width, height = image.size
    if max(width, height) <= max_side:
        return image
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "transparency" in image.info or "A" in image.mode else "RGB")
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


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

    image = cap_side(image)  # bounds the canvas for callers that did not decode through load_image
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
