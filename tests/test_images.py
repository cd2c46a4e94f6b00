"""Every common image kind decodes to 8-bit RGB; a broken file names itself in the error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcam.core.images import ImageError, load_image, load_mask

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("rgb.png", lambda: Image.fromarray(RGB)),
        ("gray.png", lambda: Image.fromarray(RGB[..., 0])),
        ("rgba.png", lambda: Image.fromarray(np.dstack([RGB, RGB[..., :1]]), "RGBA")),
        ("palette.gif", lambda: Image.fromarray(RGB).convert("P")),
        ("palette_t.png", lambda: _palette_with_transparency()),
        ("bilevel.png", lambda: Image.fromarray(RGB[..., 0] > 128)),
        ("cmyk.jpg", lambda: Image.fromarray(RGB).convert("CMYK")),
        ("photo.jpg", lambda: Image.fromarray(RGB)),
        ("photo.bmp", lambda: Image.fromarray(RGB)),
        ("photo.tif", lambda: Image.fromarray(RGB)),
        ("photo.webp", lambda: Image.fromarray(RGB)),
    ],
)
def test_common_kinds_become_rgb_uint8(tmp_path: Path, name: str, make) -> None:
    path = _save(make(), tmp_path / name)
    arr = load_image(path)
    assert arr.dtype == np.uint8 and arr.shape == (20, 30, 3)
    resized = load_image(path, size=64)
    assert resized.shape == (64, 64, 3)


def _palette_with_transparency() -> Image.Image:
    img = Image.fromarray(RGB).convert("P")
    img.info["transparency"] = 0
    return img


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    arr = load_image(path)
    np.testing.assert_array_equal(arr[0, :, 0], [0, 100, 255])
    assert (arr[..., 0] == arr[..., 2]).all()


def test_float_tiff(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(path)
    np.testing.assert_array_equal(load_image(path)[0, :, 1], [0, 128, 255])


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not an image\n", "not a readable image"),
        ("truncated.png", None, "cannot decode"),
    ],
)
def test_broken_files_name_the_file(tmp_path: Path, name: str, content, reason: str) -> None:
    path = tmp_path / name
    if content is None:
        Image.fromarray(RGB).save(path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.png"):
        load_image(tmp_path / "nope.png")


def test_mask_is_bool_and_stays_binary_when_resized(tmp_path: Path) -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 3:8] = 255
    path = _save(Image.fromarray(mask), tmp_path / "m.png")
    got = load_mask(path, size=20)
    assert got.dtype == bool and got.shape == (20, 20)
    assert got.sum() == 15 * 4


def test_large_jpeg_uses_reduced_decoding_close_to_full(tmp_path: Path) -> None:
    y, x = np.mgrid[0:512, 0:640]
    smooth = np.dstack([(x / 640 * 255), (y / 512 * 255), ((x + y) % 256)]).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    fast = load_image(path, size=128)
    with Image.open(path) as img:
        full = np.asarray(img.convert("RGB").resize((128, 128), Image.BILINEAR))
    assert fast.shape == (128, 128, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3.0
