"""Decode, normalise (EXIF orientation, RGB) and re-encode one image for a shard."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps
from torchvision.io import encode_jpeg

from lift_dist.data.jpeg import decode_rgb_draft

RESAMPLE = Image.Resampling.BICUBIC
SMALL_SIDE = 64  # images this small are encoded without chroma subsampling
EXIF_ORIENTATION = 0x0112


class BadImage(Exception):
    """The image cannot be used; the message says why (goes to the errors report)."""


@contextlib.contextmanager
def _decoding():
    try:
        yield
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large to decode safely ({e})") from None
    except Exception as e:  # PIL raises many types for truncated/corrupt files
        raise BadImage(f"unreadable or corrupt image ({type(e).__name__}: {e})") from None


def _load(img: Image.Image, draft_to: int | None) -> Image.Image:
    """Decode an opened image; a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) whose sides stay >=
    draft_to: less IDCT and colour work, no visible cost after the exact resize that follows."""
    with _decoding():
        if draft_to and img.format == "JPEG":
            img.draft("RGB", (draft_to, draft_to))
        img.load()
    return img


def _check_decodes(img: Image.Image) -> None:
    """Decode a JPEG kept as it is, at 1/8 scale: every byte of its entropy-coded data is still read
    (a truncated or corrupt file fails here as in a full decode) at half the cost."""
    with _decoding():
        img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()


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


def shorter_side_to(size: tuple[int, int], target: int | None) -> tuple[int, int]:
    """(w, h) with the shorter side down to `target`, aspect kept; never upscales (None: unchanged)."""
    w, h = size
    if target is None or min(w, h) <= target:
        return size
    if w <= h:
        return target, max(1, round(h * target / w))
    return max(1, round(w * target / h)), target


def resize_shorter(img: Image.Image, target: int) -> Image.Image:
    """PIL's antialiased bicubic resize to shorter side `target` (the reference of `encode_image`)."""
    new = shorter_side_to(img.size, target)
    return img if new == img.size else img.resize(new, RESAMPLE)


def encode_image(img: Image.Image, resize: int | None, quality: int) -> bytes:
    """An RGB image as a sample's JPEG, shorter side <= resize.

    Large RGB images go through torch's vectorised uint8 kernels (`_encode_hwc`). Tiny images
    (CIFAR's 32 px) keep full chroma through PIL: 4:2:0 would halve their colour detail."""
    new = shorter_side_to(img.size, resize)
    if img.mode != "RGB" or min(new) <= SMALL_SIDE:
        return _pil_jpeg(resize_shorter(img, resize) if resize else img, quality)
    return _encode_hwc(torch.from_numpy(np.array(img)), resize, quality)


def _encode_hwc(hwc: torch.Tensor, resize: int | None, quality: int) -> bytes:
    """(H, W, 3) uint8 pixels as a JPEG, shorter side <= resize. The antialiased bicubic resize is
    PIL's filter (a = -0.5, support widened by the reduction) within +-2 of its values at 3.5x its
    speed, and torchvision's libjpeg-turbo encoder writes the bytes PIL would (4:2:0)."""
    chw = hwc.permute(2, 0, 1)  # a channels-last view: the kernel's fast layout
    new = shorter_side_to((chw.shape[2], chw.shape[1]), resize)
    if new != (chw.shape[2], chw.shape[1]):
        chw = TF.resize(chw, [new[1], new[0]], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return encode_jpeg(chw, quality=quality).numpy().tobytes()


# EXIF orientation -> the (H, W, C) pixel operation that shows the image upright (PIL's exif_transpose).
_UPRIGHT = {
    2: lambda t: t.flip(1),
    3: lambda t: t.flip(0, 1),
    4: lambda t: t.flip(0),
    5: lambda t: t.transpose(0, 1),
    6: lambda t: t.transpose(0, 1).flip(1),
    7: lambda t: t.transpose(0, 1).flip(0, 1),
    8: lambda t: t.transpose(0, 1).flip(0),
}


def _turbo_encode(data: bytes, header: Image.Image, orientation, resize: int, quality: int) -> bytes | None:
    """A large RGB JPEG through libjpeg-turbo straight into an array (`decode_rgb_draft`: the pixels
    `_load` would give), turned upright on the tensor. None where PIL's path must decide: other modes,
    small images, unknown orientations, files libjpeg-turbo doubts."""
    upright = (lambda t: t) if orientation in (None, 1) else _UPRIGHT.get(orientation) if type(orientation) is int else None
    if upright is None or min(shorter_side_to(header.size, resize)) <= SMALL_SIDE:
        return None
    hwc = decode_rgb_draft(data, header, (resize, resize))
    return None if hwc is None else _encode_hwc(upright(torch.from_numpy(hwc)), resize, quality)


def _pil_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling=0 if min(img.size) <= SMALL_SIDE else -1)
    return buf.getvalue()


def encode_bytes(data: bytes, resize: int | None, quality: int) -> bytes:
    """JPEG bytes for a sample: shorter side <= resize (re-encoded), or with resize=None the original
    bytes when they are already a plain upright RGB JPEG (else re-encoded at full size)."""
    with _decoding():
        header = Image.open(io.BytesIO(data))
    try:
        orientation = header.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:
        orientation = 1
    if resize is None and header.format == "JPEG" and header.mode == "RGB" and orientation in (None, 1):
        _check_decodes(header)
        return data
    try:
        if resize is not None and (jpg := _turbo_encode(data, header, orientation, resize, quality)) is not None:
            return jpg
        return encode_image(to_rgb(ImageOps.exif_transpose(_load(header, resize))), resize, quality)
    except BadImage:
        raise
    except Exception as e:
        raise BadImage(f"cannot be converted to an RGB JPEG ({type(e).__name__}: {e})") from None


def encode_rgb(width: int, height: int, rgb: bytes, resize: int | None, quality: int) -> bytes:
    return encode_image(Image.frombytes("RGB", (width, height), rgb), resize, quality)
