import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from stages.imaging import ImageError, image_stats, load_rgb, normalize, resize_center_crop


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def halves(width=80, height=40) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(arr)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be rotated 90° clockwise for display
    img = load_rgb(encode(halves(), "JPEG", quality=95, exif=exif))
    assert img.size == (40, 80)
    arr = np.asarray(img)
    assert arr[5, 20, 0] > 200 and arr[5, 20, 2] < 60  # red is now on top
    assert arr[-5, 20, 2] > 200 and arr[-5, 20, 0] < 60


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_any_mode_becomes_rgb(mode):
    base = halves()
    if mode == "I;16":
        wide = (np.asarray(base.convert("L"), np.uint16) * 257)
        img = Image.fromarray(wide)
    else:
        img = base.convert(mode)
    out = load_rgb(encode(img, "PNG" if mode != "CMYK" else "JPEG"))
    assert out.mode == "RGB" and out.size == (80, 40)
    if mode == "I;16":  # 16-bit values are scaled, not clipped to white
        assert np.asarray(out)[:, :40].mean() == pytest.approx(
            np.asarray(base.convert("L"))[:, :40].mean(), abs=2)


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert np.asarray(load_rgb(encode(rgba, "PNG"))).min() == 255


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"GIF89a-not-really", "not a recognised image format"),
    (b"hello world", "not a recognised image format"),
])
def test_bad_bytes_are_named(payload, message):
    with pytest.raises(ImageError, match=message):
        load_rgb(payload)


def test_truncated_jpeg_and_decompression_bomb():
    data = encode(halves(400, 400), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_rgb(data[: len(data) // 2])
    big = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_rgb(big, max_pixels=1_000_000)


def test_resize_rule_keeps_aspect_and_crops_center():
    arr = resize_center_crop(halves(200, 100), 50)
    assert arr.shape == (50, 50, 3) and arr.dtype == np.uint8
    # 200x100 -> 100x50, the centre crop straddles the red/blue border in the middle
    assert arr[:, 5, 0].mean() > 200 and arr[:, -5, 2].mean() > 200


def test_normalize_layout_and_values():
    batch = np.full((2, 4, 4, 3), 255, np.uint8)
    x = normalize(batch, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32 and np.allclose(x, 1.0)


def test_image_stats_move_the_right_way():
    rng = np.random.default_rng(0)
    busy = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    sharp = image_stats(np.asarray(busy))
    blurred = image_stats(np.asarray(busy.filter(ImageFilter.GaussianBlur(2))))
    dark = image_stats((np.asarray(busy) * 0.3).astype(np.uint8))
    grey = image_stats(np.asarray(busy.convert("L").convert("RGB")))
    assert blurred["sharpness"] < sharp["sharpness"] / 5
    assert dark["brightness"] < sharp["brightness"] * 0.4
    assert dark["contrast"] < sharp["contrast"]
    assert grey["colourfulness"] == pytest.approx(0.0, abs=1e-3)
    assert sharp["colourfulness"] > 10
