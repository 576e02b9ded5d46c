from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
    inside = ImageLimits(base_dir=str(path.parent))
    from_path, from_str, from_uri = load_image(path), load_image(str(path), inside), load_image(path.as_uri(), inside)
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
        (Path("/nonexistent/dir/x.jpg"), "not_found"),
        ("/nonexistent/dir/x.jpg", "unsupported_source"),  # a record's path, and no image directory set
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


@pytest.fixture()
def image_dir(tmp_path, fashion):
    """An image directory holding one real photo, a sub-folder, a FIFO and symlinks; a secret outside."""
    base = tmp_path / "images"
    (base / "shoes").mkdir(parents=True)
    (base / "shoes" / "a.jpg").write_bytes(fashion[0][0].read_bytes())
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(fashion[0][1].read_bytes())
    (base / "link.jpg").symlink_to(secret)
    (base / "loop").symlink_to(tmp_path)  # a directory symlink leading out
    (base / "dev-zero").symlink_to("/dev/zero")
    os.mkfifo(base / "pipe.jpg")
    return base, secret


def test_record_paths_are_read_only_inside_the_image_directory(image_dir):
    base, _ = image_dir
    limits = ImageLimits(base_dir=str(base))
    for ok in ("shoes/a.jpg", f"{base}/shoes/a.jpg", f"file://{base}/shoes/a.jpg", f"file://localhost{base}/shoes/a.jpg",
               "./shoes//a.jpg"):
        assert load_image(ok, limits).size == (60, 80), ok


@pytest.mark.parametrize("uri", [
    "/etc/passwd", "../secret.jpg", "shoes/../../secret.jpg", "file:///etc/hostname", "file://otherhost{base}/shoes/a.jpg",
    "{base}/../secret.jpg", "{base}", "{base}x/a.jpg", "https://example.com/a.jpg", "ftp://x/a.jpg", "shoes/a.jpg\x00.png",
    "file://{base}/shoes/a.jpg?x=1", "",
])
def test_paths_leaving_the_image_directory_are_refused_without_touching_disk(image_dir, uri):
    base, _ = image_dir
    with pytest.raises(ImageError) as info:
        load_image(uri.replace("{base}", str(base)), ImageLimits(base_dir=str(base)))
    assert info.value.reason == "unsupported_source"
    assert str(base) not in str(info.value) and "secret" not in str(info.value)


@pytest.mark.parametrize("name", ["link.jpg", "loop/secret.jpg", "dev-zero", "pipe.jpg", "shoes", "missing.jpg",
                                  "x" * 300 + ".jpg"])
def test_symlinks_fifos_directories_and_missing_files_look_alike(image_dir, name):
    base, _ = image_dir
    with pytest.raises(ImageError) as info:  # a FIFO must not block: O_NONBLOCK, then refused as not regular
        load_image(name, ImageLimits(base_dir=str(base)))
    assert (info.value.reason, info.value.detail) == ("not_found", "no regular file at that path in the image directory")


def test_a_file_is_read_only_up_to_max_bytes_plus_one(image_dir, monkeypatch):
    base, _ = image_dir
    (base / "big.jpg").write_bytes(b"\xff" * 10_000)
    read = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: read.append(n) or real_read(fd, n))
    with pytest.raises(ImageError, match="^too_large: "):
        load_image("big.jpg", ImageLimits(base_dir=str(base), max_bytes=100))
    assert sum(read) == 101


def test_a_long_strip_is_refused_from_its_header(tmp_path):
    with pytest.raises(ImageError, match=r"^bad_aspect_ratio: 4000x100 pixels, at most 20:1"):
        load_image(encoded("PNG", size=(4000, 100)))
    assert load_image(encoded("PNG", size=(4000, 100)), ImageLimits(max_aspect_ratio=40)).size == (2048, 51)


def _peak_growth_mb(code: str, limit_mb: int) -> tuple[int, str]:
    """Run `code` in a fresh interpreter under an address-space limit; its peak RSS growth in MB."""
    script = textwrap.dedent(f"""
        import resource, sys
        from index.images import ImageLimits, load_image, square_tensor
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + {limit_mb} * 2**20, hard))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        {code}
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    return done.returncode, done.stdout.strip() or done.stderr[-400:]


def test_a_40000x1000_png_costs_under_500_mb_even_when_its_shape_is_allowed(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (40_000, 1000), (120, 30, 200)).save(path)  # ~120 KB encoded, 40 megapixels
    code = f"""
        data = open({str(path)!r}, "rb").read()
        x = square_tensor(load_image(data, ImageLimits(max_aspect_ratio=100)), 224)
        assert x.shape == (3, 224, 224)
    """
    rc, out = _peak_growth_mb(code, limit_mb=1500)  # padding first to 40000x40000 needs 4.8 GB
    assert rc == 0, out
    assert int(out) < 500, f"{out} MB"
