"""Decode one user image file into 8-bit RGB, or say precisely why not.

Handles what real folders hold: EXIF orientation, CMYK, palette and greyscale images, 16-bit images,
transparency (composited on a configurable background). Rejections carry a reason code from REASONS.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

REASONS = ("empty_file", "not_an_image", "truncated_image", "decompression_bomb", "too_small", "undecodable")


@dataclass
class DecodeError(Exception):
    reason: str  # one of REASONS
    detail: str


@dataclass(frozen=True)
class DecodeLimits:
    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int = 64_000_000  # width x height above this is refused before decoding
    min_size: int = 16  # shorter side below this is refused


def _to_8bit_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: rescale, do not clip
        a = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_rgb(
    source: Path | bytes, limits: DecodeLimits, shorter_side_at_least: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """(8-bit RGB image with EXIF orientation applied, original (width, height)); raises DecodeError.

    `source` is a file or the encoded bytes (a parquet cell, a tar member). With `shorter_side_at_least`,
    a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps its shorter side at least that
    long: what Pillow's `thumbnail` does, several times faster than decoding every pixel to throw most
    of them away.
    """
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    if size == 0:
        raise DecodeError("empty_file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                w, h = img.size
                if w * h > limits.max_pixels:
                    raise DecodeError(
                        "decompression_bomb", f"{w}x{h} exceeds data.max_pixels={limits.max_pixels}"
                    )
                if min(w, h) < limits.min_size:
                    raise DecodeError("too_small", f"{w}x{h} is below data.min_size={limits.min_size}")
                if shorter_side_at_least:
                    img.draft(None, (shorter_side_at_least, shorter_side_at_least))  # JPEG only; else no-op
                img.load()
                # exif_transpose returns a new image: `img` itself is released when the file closes
                rgb = _to_8bit_rgb(ImageOps.exif_transpose(img), limits.background)
    except UnidentifiedImageError:  # (its bytes are not quoted: a reject is no way to read a file)
        raise DecodeError("not_an_image", f"no image format recognised in its {size} bytes") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DecodeError("decompression_bomb", str(err)) from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports cut-off data as OSError/SyntaxError
        raise DecodeError("truncated_image", f"{type(err).__name__}: {err}") from None
    except DecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged file can make a PIL plugin fail in any way
        raise DecodeError("undecodable", f"{type(err).__name__}: {err}") from None
    return rgb, (w, h)
