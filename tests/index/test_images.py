from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from index.images import ImageError, ImageLimits, load_image, square_tensor


def encoded(fmt: str, size=(40, 30), mode="RGB", color=(200, 10, 10, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color[: len(mode)]).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decodes_supported_formats_from_bytes(fmt):
    image = load_image(encoded(fmt))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_decodes_a_real_thumbnail_from_path_string_and_file_uri(fashion):
    path = fashion[0][0]
    from_path, from_str, from_uri = load_image(path), load_image(str(path)), load_image(path.as_uri())
    assert from_path.size == (60, 80)
    assert np.array_equal(np.asarray(from_path), np.asarray(from_str))
    assert np.array_equal(np.asarray(from_path), np.asarray(from_uri))


def test_transparent_pixels_become_white():
    image = load_image(encoded("PNG", mode="RGBA", color=(0, 0, 0, 0)))
    assert np.asarray(image)[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "corrupt"),
        (b"definitely not an image", "unsupported_format"),
        ("/nonexistent/dir/x.jpg", "not_found"),
        ("https://example.com/x.jpg", "unsupported_source"),
    ],
)
def test_unusable_sources_raise_image_error_with_reason(source, reason):
    with pytest.raises(ImageError, match=f"^{reason}: ") as info:
        load_image(source)
    assert info.value.reason == reason


def test_truncated_jpeg_is_corrupt(fashion):
    data = fashion[0][0].read_bytes()
    with pytest.raises(ImageError, match="^corrupt: "):
        load_image(data[: len(data) // 2])


def test_gif_is_not_accepted():
    with pytest.raises(ImageError, match="unsupported_format"):
        load_image(encoded("GIF", mode="P", color=(1,)))


def test_oversized_bytes_pixels_and_files_are_too_large(tmp_path):
    data = encoded("PNG", size=(100, 100))
    with pytest.raises(ImageError, match="too_large: .* bytes, limit 10"):
        load_image(data, ImageLimits(max_bytes=10))
    with pytest.raises(ImageError, match=r"too_large: 100x100 pixels, limit 9999"):
        load_image(data, ImageLimits(max_pixels=9_999))
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="too_large"):
        load_image(path, ImageLimits(max_bytes=10))


def test_limits_reject_non_positive_values():
    with pytest.raises(ValueError, match="ImageLimits.max_pixels"):
        ImageLimits(max_pixels=0)


def test_square_tensor_pads_resizes_and_scales_to_unit_range(fashion):
    x = square_tensor(load_image(fashion[0][0]), 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
