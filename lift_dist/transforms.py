"""Image transforms (torchvision.transforms v1 throughout).

Every transform takes a PIL image. The training ones (and `eval_transform`) also take a (3, H, W)
uint8 tensor, as the training stream decodes them: crops and resizes then run through torch's uint8
antialias kernels on a channels-last copy, Pillow's algorithm vectorised (the same values up to
rounding, at most two grey levels; about 3x faster here; `benchmarks/data.py --pil-decode` compares).

- `lift_train_transform`: LIFT's RandomResizedCrop + flip (LIFT §6).
- `minimalist_train_transform`: LIFT+'s minimalist augmentation (MDA, LIFT+ §2): a square crop whose
  minimum area rises with the epoch. The epoch is read from an explicit value (`SharedEpoch`, shared
  memory), not from a counter stepped on the transform, so it also works with persistent DataLoader
  or webdataset workers (the official counter silently froze at epoch 0 there).
- `eval_transform`: Resize(res·8/7) + CenterCrop (LIFT §7; LIFT+'s res + res//7 is the same number).
- `tte_transform` + `average_crop_logits`: five/ten crops of Resize(res + expand), raw logits averaged.

Every transform here is picklable (no lambdas), for spawn-started workers.
"""

from __future__ import annotations

import math
import multiprocessing

import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from lift_dist.errors import ConfigError, DataError, choices
from lift_dist.transform_names import AUGMENTATIONS, INTERPOLATION_NAMES, MDA_SCHEDULES, TTE_MODES  # noqa: F401

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
assert tuple(INTERPOLATIONS) == INTERPOLATION_NAMES
MDA_BASE_MIN_SCALE = 0.08  # torchvision RandomResizedCrop's default lower scale


def _interp(interpolation) -> InterpolationMode:
    if isinstance(interpolation, InterpolationMode):
        return interpolation
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation '{interpolation}'; valid: {choices(INTERPOLATIONS)}")
    return INTERPOLATIONS[interpolation]


def _check_res(res) -> int:
    if isinstance(res, bool) or not isinstance(res, int) or res < 1:
        raise ConfigError(f"image resolution must be a positive integer, got {res!r}")
    return res


def _normalize() -> T.Normalize:
    return T.Normalize(CLIP_MEAN, CLIP_STD)


def resized_crop(img, top: int, left: int, height: int, width: int, size, interpolation: InterpolationMode):
    """Crop, then antialiased resize to `size` (h, w): a PIL image, or a (3, H, W) uint8 tensor."""
    if not isinstance(img, torch.Tensor):
        return TF.resized_crop(img, top, left, height, width, list(size), interpolation, antialias=True)
    crop = img[:, top:top + height, left:left + width].unsqueeze(0)
    if crop.device.type != "cpu":  # (device decoding) CUDA's antialias kernels take float: back to uint8 levels after
        out = F.interpolate(crop.float(), size=tuple(size), mode=interpolation.value, antialias=True, align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)[0]
    # Packed channels-last, uint8 takes torch's vectorised antialias path; strided crops fall back
    # to a generic kernel several times slower.
    crop = crop.contiguous(memory_format=torch.channels_last)
    return F.interpolate(crop, size=tuple(size), mode=interpolation.value, antialias=True, align_corners=False)[0]


class RandomResizedCrop(T.RandomResizedCrop):
    """torchvision's RandomResizedCrop (same parameters, same random draws) with the fast uint8
    tensor path of `resized_crop`."""

    def forward(self, img):
        top, left, h, w = self.get_params(img, self.scale, self.ratio)
        return resized_crop(img, top, left, h, w, self.size, self.interpolation)


class Resize(T.Resize):
    """torchvision's Resize(int) of the shorter side, with the fast uint8 tensor path."""

    def forward(self, img):
        if not isinstance(img, torch.Tensor) or not isinstance(self.size, int):
            return super().forward(img)
        h, w = img.shape[-2:]
        size = self.resized_size(h, w)
        return img if size == (h, w) else resized_crop(img, 0, 0, h, w, size, self.interpolation)

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) after resizing the shorter side of h x w to `size`, as torchvision rounds."""
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_long, new_short) if w <= h else (new_short, new_long)


class ToUint8Tensor:
    """PIL image or uint8 tensor -> (3, H, W) uint8 tensor whose memory is dense HWC (channels-last),
    the layout the JPEG decoder and the resize kernel produce: no per-image transpose in the loader
    worker; a batch is made planar once, on the training device (`normalize_uint8`)."""

    def __call__(self, img) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):
            img = TF.pil_to_tensor(img)
        if img.dtype != torch.uint8:
            raise DataError(f"expected a uint8 image tensor, got {img.dtype}")
        hwc = img.permute(1, 2, 0)
        return (hwc if hwc.is_contiguous() else hwc.contiguous()).permute(2, 0, 1)

    def __repr__(self) -> str:
        return "ToUint8Tensor()"


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """(B, 3, H, W) from (3, H, W) images; channels-last ones stay channels-last (one memcpy each).
    Stacks of views (test-time ensembling) are stacked as they are."""
    if images[0].dim() == 3 and images[0].dtype == torch.uint8 and all(im.permute(1, 2, 0).is_contiguous() for im in images):
        return torch.stack([im.permute(1, 2, 0) for im in images]).permute(0, 3, 1, 2)
    return torch.stack(images)


def lift_train_transform(res: int, interpolation="bilinear") -> T.Compose:
    """LIFT: RandomResizedCrop(res) with default scale (0.08, 1) and ratio (3/4, 4/3), flip, normalise."""
    return T.Compose(
        [RandomResizedCrop(_check_res(res), interpolation=_interp(interpolation)), T.RandomHorizontalFlip(),
         T.ToTensor(), _normalize()]
    )


# ---------------------------------------------------------------------------------------------- MDA


class SharedEpoch:
    """The current epoch in shared memory: set in the main process, read in (persistent) workers.

    Wraps a `multiprocessing.Value('i')`; it travels to DataLoader workers when they start (fork or
    spawn), after which `set(e)` in the main process is visible to them.
    """

    def __init__(self, epoch: int = 0):
        # lock=False: a raw shared int (one writer) has no SemLock, so it can go to fork, spawn and
        # forkserver workers alike (a locked Value made in the fork context cannot reach spawned ones).
        self._value = multiprocessing.Value("i", int(epoch), lock=False)

    def set(self, epoch: int) -> None:
        self._value.value = int(epoch)

    def get(self) -> int:
        return int(self._value.value)

    def __repr__(self) -> str:
        return f"SharedEpoch({self.get()})"


def mda_min_scale(epoch: int, num_epochs: int, schedule: str = "convex") -> float:
    """Minimum crop area fraction at `epoch` (0-based) of `num_epochs` (LIFT+ §2.2)."""
    if num_epochs == 1:
        t = 1.0  # [BUG fixed] the official t = epoch/(E−1) divides by zero for E = 1
    else:
        t = epoch / (num_epochs - 1)
    if schedule == "min":
        s = 0.0
    elif schedule == "max":
        s = 1.0
    elif schedule == "linear":
        s = t
    elif schedule == "convex":
        s = 1.0 - math.sqrt(max(0.0, 1.0 - t * t))
    elif schedule == "concave":
        s = math.sqrt(max(0.0, 1.0 - (1.0 - t) ** 2))
    else:
        raise ConfigError(f"unknown MDA schedule '{schedule}'; valid: {choices(MDA_SCHEDULES)}")
    return s * (1.0 - MDA_BASE_MIN_SCALE) + MDA_BASE_MIN_SCALE


def mda_crop_params(height: int, width: int, min_scale: float, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, side, side) of a square crop (LIFT+ §2.3): area = A·U(lo, hi) where the scale
    bounds are fractions of the full image area A clamped to the largest square Q = min(H, W)²;
    no ratio jitter, no retry loop. Uses the torch RNG (seeded per sample by the data pipeline)."""
    area = height * width
    square = min(height, width) ** 2 / area
    lo, hi = min(min_scale, square), square
    target = area * torch.empty(1).uniform_(lo, hi, generator=generator).item()
    side = min(max(1, round(math.sqrt(target))), min(height, width))
    top = int(torch.randint(0, height - side + 1, (1,), generator=generator).item())
    left = int(torch.randint(0, width - side + 1, (1,), generator=generator).item())
    return top, left, side, side


class MinimalistRandomCrop:
    """LIFT+ MDA crop: a random square, resized to (res, res) with antialiasing; no flip.

    `epoch` is an int or any object with `.get()` (normally a `SharedEpoch`); `__call__(img, epoch=e)`
    overrides it. The last epoch gives the largest square at a random position (the full image for
    square images).
    """

    def __init__(self, res: int, num_epochs: int, schedule: str = "convex", interpolation="bicubic", epoch=None):
        self.res = _check_res(res)
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise ConfigError(f"MDA needs num_epochs >= 1, got {num_epochs!r}")
        if schedule not in MDA_SCHEDULES:
            raise ConfigError(f"unknown MDA schedule '{schedule}'; valid: {choices(MDA_SCHEDULES)}")
        self.num_epochs, self.schedule = num_epochs, schedule
        self.interpolation = _interp(interpolation)
        self.epoch = SharedEpoch(0) if epoch is None else epoch
        self.last_params = None  # (top, left, h, w, min_scale) of the last call, for inspection

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.epoch, "set"):
            self.epoch.set(epoch)
        else:
            self.epoch = int(epoch)

    def current_epoch(self) -> int:
        return int(self.epoch.get() if hasattr(self.epoch, "get") else self.epoch)

    def min_scale(self, epoch: int | None = None) -> float:
        e = self.current_epoch() if epoch is None else int(epoch)
        if not 0 <= e < self.num_epochs:
            raise ConfigError(f"MDA epoch {e} is outside 0..{self.num_epochs - 1} (num_epochs={self.num_epochs})")
        return mda_min_scale(e, self.num_epochs, self.schedule)

    def __call__(self, img, epoch: int | None = None):
        min_scale = self.min_scale(epoch)
        width, height = TF.get_image_size(img)
        top, left, h, w = mda_crop_params(height, width, min_scale)
        self.last_params = (top, left, h, w, min_scale)
        return resized_crop(img, top, left, h, w, (self.res, self.res), self.interpolation)

    def __repr__(self) -> str:
        return (f"MinimalistRandomCrop(res={self.res}, num_epochs={self.num_epochs}, schedule={self.schedule}, "
                f"interpolation={self.interpolation.value}, epoch={self.epoch!r})")


class _MDACompose(T.Compose):
    """Compose that forwards an `epoch=` override to the MDA crop."""

    def __call__(self, img, epoch: int | None = None):
        for t in self.transforms:
            img = t(img, epoch=epoch) if isinstance(t, MinimalistRandomCrop) else t(img)
        return img

    @property
    def crop(self) -> MinimalistRandomCrop:
        return self.transforms[0]


def minimalist_train_transform(res: int, num_epochs: int, schedule: str = "convex", epoch=None, interpolation="bicubic") -> _MDACompose:
    """LIFT+ train transform: MDA crop (bicubic), ToTensor, Normalize; no flip or other augmentation."""
    crop = MinimalistRandomCrop(res, num_epochs, schedule, interpolation=interpolation, epoch=epoch)
    return _MDACompose([crop, T.ToTensor(), _normalize()])


# ----------------------------------------------------------------------------------------- evaluation


def eval_transform(res: int, interpolation="bilinear") -> T.Compose:
    """Resize(res·8//7) on the shorter side, CenterCrop(res). [QUIRK kept] not CLIP's own 224-resize:
    it is what the paper's numbers were measured with."""
    res = _check_res(res)
    return T.Compose([Resize(res * 8 // 7, interpolation=_interp(interpolation)), T.CenterCrop(res), T.ToTensor(), _normalize()])


def plain_transform(res: int, interpolation="bilinear") -> T.Compose:
    """Resize(res) on the shorter side + CenterCrop(res): the official codes' `transform_plain`, which
    gives the class-mean and linear-probe head-init features (not the test transform's 8/7 resize)."""
    res = _check_res(res)
    return T.Compose([Resize(res, interpolation=_interp(interpolation)), T.CenterCrop(res), T.ToTensor(), _normalize()])


class _StackCrops:
    """Tuple of PIL crops → normalised (n, 3, H, W) tensor (in [0, 1] with normalize=False)."""

    def __init__(self, normalize: bool = True):
        self.to_tensor, self.normalize = T.ToTensor(), _normalize() if normalize else None

    def __call__(self, crops):
        x = torch.stack([self.to_tensor(c) for c in crops])
        return self.normalize(x) if self.normalize is not None else x

    def __repr__(self) -> str:
        return "StackCrops(ToTensor" + (", Normalize)" if self.normalize is not None else ")")


def without_normalize(transform: T.Compose) -> T.Compose:
    """The same transform ending in [0, 1] tensors: exported models normalise inside."""
    steps = [(_StackCrops(normalize=False) if isinstance(t, _StackCrops) else t) for t in transform.transforms
             if not isinstance(t, T.Normalize)]
    return type(transform)(steps)


class RandomViews:
    """`views` independent RandomResizedCrop(res) + horizontal-flip views of one image (LIFT's `randaug`
    test-time mode, despite its name no RandAugment)."""

    def __init__(self, res: int, views: int, interpolation: InterpolationMode):
        self.views = views
        self.view = T.Compose([RandomResizedCrop(res, interpolation=interpolation), T.RandomHorizontalFlip()])

    def __call__(self, img):
        return tuple(self.view(img) for _ in range(self.views))

    def __repr__(self) -> str:
        return f"RandomViews(views={self.views}, {self.view!r})"


def tte_transform(res: int, mode: str = "fivecrop", expand: int = 24, interpolation="bilinear", views: int = 1) -> T.Compose:
    """Test-time expansion: Resize(res + expand) on the shorter side, then the 4 corners + centre of
    the whole (non-square) resized image; `tencrop` adds their horizontal flips (torchvision order:
    5 crops, then the 5 crops of the flipped image); `randaug` takes `views` random views of the
    original image instead (RandomResizedCrop + flip, no resize first). Output (n, 3, res, res)."""
    res = _check_res(res)
    if mode not in TTE_MODES:
        raise ConfigError(f"unknown TTE mode '{mode}'; valid: {choices(TTE_MODES)}")
    if isinstance(expand, bool) or not isinstance(expand, int) or expand < 0:
        raise ConfigError(f"TTE expand must be a non-negative integer, got {expand!r}")
    if mode == "randaug":
        return T.Compose([RandomViews(res, views, _interp(interpolation)), _StackCrops()])
    crops = T.FiveCrop(res) if mode == "fivecrop" else T.TenCrop(res)
    return T.Compose([T.Resize(res + expand, interpolation=_interp(interpolation)), crops, _StackCrops()])


def average_crop_logits(model_fn, crops: torch.Tensor) -> torch.Tensor:
    """Run all B·n crops as one batch and average the raw logits over crops (no softmax), in fp32."""
    if crops.ndim == 4:  # a plain (B, 3, H, W) batch is one crop per image
        crops = crops.unsqueeze(1)
    if crops.ndim != 5:
        raise DataError(f"crops must be (batch, crops, 3, H, W), got shape {tuple(crops.shape)}")
    B, n = crops.shape[:2]
    logits = model_fn(crops.reshape(B * n, *crops.shape[2:]))
    return logits.float().reshape(B, n, -1).mean(dim=1)


# ------------------------------------------------------------------------------- uint8 data path


def uint8_output(transform: T.Compose) -> T.Compose:
    """The same transform, but ending in a uint8 tensor instead of ToTensor + Normalize; it then also
    takes uint8 tensor images (see the module docstring).

    Loader workers then send 4x fewer bytes, and the float conversion and normalisation run once per
    batch on the training device (`normalize_uint8`), which gives the same values.
    """
    steps = [t for t in transform.transforms if not isinstance(t, (T.ToTensor, T.Normalize))]
    return type(transform)(steps + [ToUint8Tensor()])


_SCALE = torch.tensor([1.0 / (255.0 * s) for s in CLIP_STD]).view(1, 3, 1, 1)
_SHIFT = torch.tensor([m / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(1, 3, 1, 1)


def normalize_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 (planar or channels-last) -> planar CLIP-normalised float32, on x's device."""
    return x.contiguous().float().mul_(_SCALE.to(x.device)).sub_(_SHIFT.to(x.device))
