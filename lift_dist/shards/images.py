"""Decode, normalise (EXIF orientation, RGB) and re-encode one image for a shard."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

RESAMPLE = Image.Resampling.BICUBIC
EXIF_ORIENTATION = 0x0112


class BadImage(Exception):
    """The image cannot be used; the message says why (goes to the errors report)."""


def _open(data: bytes, draft_to: int | None) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        if draft_to and img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying >= the target on both sides:
            # most of the decode cost of a large photo, at no visible cost after the resize.
            img.draft("RGB", (draft_to, draft_to))
        img.load()
        return img
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large to decode safely ({e})") from None
    except Exception as e:  # PIL raises many types for truncated/corrupt files
        raise BadImage(f"unreadable or corrupt image ({type(e).__name__}: {e})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, CMYK, palette and 16-bit images become RGB; transparency is composited on white
    (dropping alpha would expose whatever colour the transparent pixels happen to hold)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif img.mode == "L" or img.mode == "1":
        return img.convert("RGB")
    elif img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grey: scale 16-bit ranges down to 8 bits instead of clipping them white.
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
        return img.convert("RGB")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Shorter side down to `size` pixels, aspect kept; never upscales."""
    w, h = img.size
    if min(w, h) <= size:
        return img
    if w <= h:
        new = (size, max(1, round(h * size / w)))
    else:
        new = (max(1, round(w * size / h)), size)
    return img.resize(new, RESAMPLE)


def _jpeg(img: Image.Image, quality: int, small: bool) -> bytes:
    buf = io.BytesIO()
    # Tiny images (CIFAR's 32 px) keep full chroma: 4:2:0 subsampling would halve their colour detail.
    img.save(buf, "JPEG", quality=quality, subsampling=0 if small else -1)
    return buf.getvalue()


def encode_bytes(data: bytes, resize: int | None, quality: int) -> bytes:
    """JPEG bytes for a sample: shorter side <= resize (re-encoded), or with resize=None the original
    bytes when they are already a plain upright RGB JPEG (else re-encoded at full size)."""
    img = _open(data, resize)
    fmt, mode = img.format, img.mode
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:
        orientation = 1
    if resize is None and fmt == "JPEG" and mode == "RGB" and orientation in (None, 1):
        return data
    try:
        img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
        if resize is not None:
            img = resize_shorter(img, resize)
        return _jpeg(img, quality, small=min(img.size) <= 64)
    except BadImage:
        raise
    except Exception as e:
        raise BadImage(f"cannot be converted to an RGB JPEG ({type(e).__name__}: {e})") from None


def encode_rgb(width: int, height: int, rgb: bytes, resize: int | None, quality: int) -> bytes:
    img = Image.frombytes("RGB", (width, height), rgb)
    if resize is not None:
        img = resize_shorter(img, resize)
    return _jpeg(img, quality, small=min(img.size) <= 64)
