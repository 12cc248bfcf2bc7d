"""Image decoding, the resize rule and image statistics.

Torch-free on purpose: the transform stage, the BentoML service and the drift monitor all import
this module, so training and serving see exactly the same pixels.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_RULE = "shorter side to image_size (bilinear, antialiased), then center crop"
DEFAULT_MAX_PIXELS = 40_000_000
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class ImageError(ValueError):
    """An input that cannot be turned into an RGB image; the message says why."""


def load_rgb(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode fully, apply EXIF orientation, and convert any mode to 8-bit RGB."""
    name = "upload" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes) and not source:
        raise ImageError("the upload is empty (0 bytes): send a JPEG or PNG file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels} pixels "
                    "(possible decompression bomb): send a smaller image")
            img.load()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image format (send a JPEG or PNG)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses huge declared sizes inside Image.open, before the check above runs.
        raise ImageError(f"{name}: too many pixels, possible decompression bomb ({exc}): "
                         "send a smaller image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: the image data is corrupt or truncated ({exc})") from None
    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img, dtype=np.float64)
        scale = 257.0 if wide.max(initial=0) > 255 else 1.0
        img = Image.fromarray(np.clip(wide / scale, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB") if img.mode != "RGB" else img


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """The single resize rule of the project: HxWx3 uint8 of side `size`."""
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def normalize(batch: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """NHWC uint8 -> NCHW float32, scaled to [0, 1] then standardised."""
    x = batch.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


STAT_NAMES = ("brightness", "contrast", "sharpness", "colourfulness")


def image_stats(rgb: np.ndarray) -> dict[str, float]:
    """Per-image statistics watched for drift (on the resized HxWx3 uint8 image)."""
    x = rgb.astype(np.float32)
    luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    lap = (-4 * luma[1:-1, 1:-1] + luma[:-2, 1:-1] + luma[2:, 1:-1]
           + luma[1:-1, :-2] + luma[1:-1, 2:])
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    # Hasler & Süsstrunk (2003) colourfulness.
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return {
        "brightness": float(luma.mean() / 255.0),
        "contrast": float(luma.std() / 255.0),
        "sharpness": float(lap.var()),
        "colourfulness": float(colourfulness),
    }
