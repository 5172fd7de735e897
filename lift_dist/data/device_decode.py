"""JPEG decoding on the training device (`data.decode_device=cuda`).

A GPU node is CPU-bound when its loader workers decode and resize every image: ViT-B/16 at 40% MFU
eats ~400 images/s per GPU. With device decoding the workers only read the shards and draw each
sample's augmentation -- the crop box and flip the uint8 train transform would apply, with the same
random numbers in the same order (`plan_geometry`) -- and ship the JPEG bytes (~20 KB instead of a
150 KB tensor). The main process decodes a chunk in one batched nvJPEG call (TorchCodec, else
torchvision) and crops, resizes and flips each image there (`apply_geometry`, the transforms' own
`resized_crop`).

On the CPU the same path gives the same batches as decoding in the workers, bit for bit (the tests
run it so); on CUDA the resize runs in float and is rounded back to uint8 (within one grey level).
Images are decoded at full size (nvJPEG has no DCT scaling): shards built with the default resize
get the same crops as on the CPU path; a non-JPEG sample is decoded in its worker as before.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T

from lift_dist.errors import ConfigError, DataError
from lift_dist.transforms import (
    MinimalistRandomCrop,
    RandomResizedCrop,
    Resize,
    ToUint8Tensor,
    mda_crop_params,
    resized_crop,
    stack_images,
)


@dataclass(frozen=True)
class DeferredImage:
    """A sample's JPEG bytes and what the train transform does to them, decoded in the main process."""

    data: bytes
    steps: tuple  # ("crop_resize", top, left, h, w, (out_h, out_w), interpolation) | ("crop", top, left, h, w) | ("flip",)
    where: str  # "sample 'KEY' in SHARD", for errors


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG from its header, or None for other formats (decoded in the worker)."""
    try:
        img = Image.open(io.BytesIO(data))  # the header only
    except Exception:
        return None  # not an image PIL knows: the worker's decode names the sample
    return (img.height, img.width) if img.format == "JPEG" else None


def plan_geometry(transform: T.Compose, height: int, width: int) -> tuple:
    """The geometric steps of a uint8 train transform (`transforms.uint8_output`) on an image of
    height x width, drawing the random numbers its steps draw, in the same order."""
    steps = []
    for t in transform.transforms:
        if isinstance(t, RandomResizedCrop):
            top, left, h, w = t.get_params(_shape_only(height, width), t.scale, t.ratio)
            steps.append(("crop_resize", top, left, h, w, tuple(t.size), t.interpolation))
            height, width = t.size
        elif isinstance(t, MinimalistRandomCrop):
            top, left, h, w = mda_crop_params(height, width, t.min_scale())
            steps.append(("crop_resize", top, left, h, w, (t.res, t.res), t.interpolation))
            height = width = t.res
        elif isinstance(t, T.RandomHorizontalFlip):
            if torch.rand(1) < t.p:  # RandomHorizontalFlip.forward's draw
                steps.append(("flip",))
        elif isinstance(t, Resize) and isinstance(t.size, int):
            size = t.resized_size(height, width)
            if size != (height, width):
                steps.append(("crop_resize", 0, 0, height, width, size, t.interpolation))
                height, width = size
        elif isinstance(t, T.CenterCrop):
            th, tw = t.size
            if th > height or tw > width:
                raise DataError(f"CenterCrop({th}x{tw}) of a {height}x{width} image would pad")
            top, left = int(round((height - th) / 2.0)), int(round((width - tw) / 2.0))  # torchvision's rounding
            steps.append(("crop", top, left, th, tw))
            height, width = th, tw
        elif not isinstance(t, ToUint8Tensor):
            raise ConfigError(f"data.decode_device=cuda cannot run the transform step {t!r} on the device; "
                              "use data.decode_device=cpu")
    return tuple(steps)


def _shape_only(height: int, width: int) -> torch.Tensor:
    """A (3, height, width) tensor of one element, for torchvision's get_params (reads the shape only)."""
    return torch.empty(1, dtype=torch.uint8).expand(3, height, width)


def apply_geometry(img: torch.Tensor, steps: tuple) -> torch.Tensor:
    for step in steps:
        if step[0] == "crop_resize":
            img = resized_crop(img, *step[1:5], step[5], step[6])
        elif step[0] == "crop":
            top, left, h, w = step[1:]
            img = img[:, top:top + h, left:left + w]
        else:
            img = img.flip(-1)
    return img


def _batch_decoder():
    """Batched JPEG decoding to (3, H, W) uint8 on a device: TorchCodec, else torchvision."""
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: PLC0415  (optional dependency)

        return lambda datas, device: decode_jpeg(datas, mode="RGB", device=device)
    except Exception:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg  # noqa: PLC0415
        return lambda datas, device: decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


class DeviceDecoder:
    """Main process: chunks with DeferredImages -> chunks of (B, 3, H, W) uint8 batches on `device`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.decode = _batch_decoder()

    def __call__(self, chunks: Iterator[tuple]) -> Iterator[tuple]:
        for chunk in chunks:
            images, labels, keys = chunk[:3]
            yield (self.images(images) if isinstance(images, list) else images.to(self.device)), labels, keys

    def images(self, items: list) -> torch.Tensor:
        deferred = [i for i, item in enumerate(items) if isinstance(item, DeferredImage)]
        decoded = self._decode([items[i] for i in deferred])
        out = list(items)
        for i, img in zip(deferred, decoded):
            out[i] = apply_geometry(img, items[i].steps)
        return stack_images([im.to(self.device) for im in out])

    def _decode(self, items: list[DeferredImage]) -> list[torch.Tensor]:
        datas = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items]
        try:
            return list(self.decode(datas, self.device)) if datas else []
        except Exception:
            for item, data in zip(items, datas):  # one at a time, to name the sample that fails
                try:
                    self.decode([data], self.device)
                except Exception as e:
                    raise DataError(f"{item.where}: image cannot be decoded ({type(e).__name__}: {str(e).strip()})") from None
            raise
