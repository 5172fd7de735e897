import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from lift_dist.errors import ConfigError, DataError
from lift_dist.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    MinimalistRandomCrop,
    SharedEpoch,
    average_crop_logits,
    eval_transform,
    lift_train_transform,
    mda_crop_params,
    mda_min_scale,
    minimalist_train_transform,
    tte_transform,
)


def coord_image(w: int, h: int) -> Image.Image:
    """R = 3x, G = 4y: every pixel tells where it came from."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return Image.fromarray(np.stack([x * 3, y * 4, np.zeros_like(x)], -1).astype(np.uint8))


def to_uint8(t: torch.Tensor) -> torch.Tensor:
    """Undo Normalize + ToTensor."""
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return ((t * std + mean) * 255).round().to(torch.uint8)


def window(img: Image.Image, top: int, left: int, size: int) -> torch.Tensor:
    return TF.pil_to_tensor(img)[:, top : top + size, left : left + size]


# ------------------------------------------------------------------------------------------ MDA


@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("convex", [0.08, 0.1092, 0.2033, 0.3915, 1.0]),
        ("linear", [0.08, 0.31, 0.54, 0.77, 1.0]),
        ("concave", [0.08, 0.6885, 0.8767, 0.9708, 1.0]),
        ("min", [0.08] * 5),
        ("max", [1.0] * 5),
    ],
)
def test_mda_min_scale_five_epochs(schedule, expected):
    assert [round(mda_min_scale(e, 5, schedule), 4) for e in range(5)] == expected
    crop = MinimalistRandomCrop(32, 5, schedule)
    assert [round(crop.min_scale(e), 4) for e in range(5)] == expected


def test_mda_min_scale_longer_runs_and_single_epoch():
    assert [round(mda_min_scale(e, 10), 4) for e in range(10)] == [
        0.08, 0.0857, 0.1030, 0.1326, 0.1759, 0.2350, 0.3143, 0.4217, 0.5785, 1.0]
    assert round(mda_min_scale(7, 15), 4) == 0.2033 and round(mda_min_scale(13, 15), 4) == 0.6585
    assert mda_min_scale(0, 1) == 1.0  # the official code divides by zero here


def test_mda_crop_is_square_within_bounds_and_grows():
    torch.manual_seed(0)
    H, W = 60, 100
    A, side_max = H * W, 60
    for epoch in range(5):
        lo = min(mda_min_scale(epoch, 5), side_max**2 / A)
        for _ in range(200):
            top, left, h, w = mda_crop_params(H, W, mda_min_scale(epoch, 5))
            assert h == w and 1 <= h <= side_max
            assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
            assert (h + 0.5) ** 2 >= lo * A  # area ≥ lower bound (up to rounding the side)
    # epoch 0: area fraction ~ U(0.08, Q/A = 0.6), so its mean is 0.34 (unclamped bounds would give ~0.5)
    areas = [mda_crop_params(H, W, 0.08)[2] ** 2 / A for _ in range(400)]
    assert abs(np.mean(areas) - 0.34) < 0.03 and min(areas) >= 0.07 and max(areas) <= 0.6
    # last epoch: always the largest square, at a random position
    params = {mda_crop_params(H, W, 1.0) for _ in range(50)}
    assert {p[2] for p in params} == {60} and len({p[1] for p in params}) > 1


def test_mda_transform_output_and_epoch_override():
    torch.manual_seed(0)
    img = coord_image(48, 48)
    tf = minimalist_train_transform(32, 5, "convex", epoch=SharedEpoch(0))
    out = tf(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert tf.crop.last_params[4] == pytest.approx(0.08)
    # square image, last epoch: the whole image, bicubic antialiased, no flip
    out = tf(img, epoch=4)
    assert tf.crop.last_params[:4] == (0, 0, 48, 48)
    ref = TF.normalize(TF.to_tensor(TF.resize(img, [32, 32], InterpolationMode.BICUBIC, antialias=True)), CLIP_MEAN, CLIP_STD)
    assert torch.allclose(out, ref)
    assert tf.crop.current_epoch() == 0  # the override did not change the shared value
    tf.crop.set_epoch(3)
    tf(img)
    assert tf.crop.last_params[4] == pytest.approx(0.3915, abs=1e-4)
    plain = MinimalistRandomCrop(32, 5, epoch=2)  # a plain int works too
    plain(img)
    assert plain.last_params[4] == pytest.approx(0.2033, abs=1e-4)


def test_mda_bad_inputs():
    with pytest.raises(ConfigError, match="concave, convex, linear, max, min"):
        MinimalistRandomCrop(32, 5, "cubic")
    with pytest.raises(ConfigError, match="num_epochs"):
        MinimalistRandomCrop(32, 0)
    with pytest.raises(ConfigError, match="bicubic, bilinear"):
        MinimalistRandomCrop(32, 5, interpolation="lanczos")
    with pytest.raises(ConfigError, match="outside 0..4"):
        MinimalistRandomCrop(32, 5)(coord_image(40, 40), epoch=5)


class _CropProbe(torch.utils.data.Dataset):
    """Returns, from inside the worker, the min scale and crop side the MDA transform used."""

    def __init__(self, transform):
        self.transform, self.img = transform, coord_image(100, 80)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = self.transform(self.img)
        top, left, h, w, min_scale = self.transform.crop.last_params
        return x.shape[-1], min_scale, h, torch.utils.data.get_worker_info().id


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_shared_epoch_reaches_persistent_workers(context):
    epoch = SharedEpoch(0)
    ds = _CropProbe(minimalist_train_transform(16, 5, "convex", epoch))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=2, persistent_workers=True, multiprocessing_context=context
    )
    seen = {}
    for e in (0, 3, 4):
        epoch.set(e)  # before the epoch's iterator is created, as the trainer does
        rows = [r for batch in loader for r in zip(*[v.tolist() for v in batch])]
        seen[e] = rows
        assert len(rows) == 8 and {r[3] for r in rows} == {0, 1}  # both (persistent) workers served
        assert all(r[0] == 16 for r in rows)
    assert all(r[1] == pytest.approx(0.08) for r in seen[0])
    assert all(r[1] == pytest.approx(0.3915, abs=1e-4) for r in seen[3])
    assert all(r[2] ** 2 >= 0.3915 * 8000 - 2 * r[2] for r in seen[3])  # bigger crops
    assert all(r[2] == 80 for r in seen[4])  # last epoch: the largest square
    assert loader._iterator is not None and loader._iterator._persistent_workers
    del loader


# ------------------------------------------------------------------------------------- train / eval


def test_lift_train_and_eval_transforms_shapes_and_geometry():
    torch.manual_seed(0)
    img = coord_image(90, 70)
    assert lift_train_transform(32)(img).shape == (3, 32, 32)
    rrc = lift_train_transform(32, "bicubic").transforms[0]
    assert rrc.scale == (0.08, 1.0) and rrc.interpolation == InterpolationMode.BICUBIC
    ev = eval_transform(64)
    assert ev.transforms[0].size == 73  # 64·8//7, shorter side
    out = ev(coord_image(146, 73))  # already 73 on the shorter side: resize is a no-op
    assert torch.equal(to_uint8(out), window(coord_image(146, 73), 4, 41, 64))  # centre window
    assert eval_transform(224).transforms[0].size == 256
    assert eval_transform(384).transforms[0].size == 438
    with pytest.raises(ConfigError, match="resolution"):
        eval_transform(0)


def test_fivecrop_windows_of_the_resized_image():
    # 80×56 is already res + expand = 56 on the shorter side: crops are raw pixel windows
    img = coord_image(80, 56)
    crops = tte_transform(32, "fivecrop", expand=24)(img)
    assert crops.shape == (5, 3, 32, 32)
    expected = [(0, 0), (0, 48), (24, 0), (24, 48), (12, 24)]  # tl, tr, bl, br, centre (top, left)
    for k, (top, left) in enumerate(expected):
        assert torch.equal(to_uint8(crops[k]), window(img, top, left, 32)), k
    # a bigger image is first resized (shorter side → 56, bilinear) and cropped from the whole,
    # non-square resized image
    big = coord_image(160, 112)
    resized = TF.resize(big, 56, InterpolationMode.BILINEAR)
    assert resized.size == (80, 56)
    crops = tte_transform(32, "fivecrop", expand=24)(big)
    for k, (top, left) in enumerate(expected):
        assert torch.equal(to_uint8(crops[k]), window(resized, top, left, 32)), k


def test_tencrop_adds_flips():
    img = coord_image(80, 56)
    crops = tte_transform(32, "tencrop", expand=24)(img)
    assert crops.shape == (10, 3, 32, 32)
    # crops of the flipped image: flipped tl = mirrored tr, flipped tr = mirrored tl, ...
    for flipped, original in zip(range(5, 10), (1, 0, 3, 2, 4)):
        assert torch.equal(crops[flipped], crops[original].flip(-1))
    with pytest.raises(ConfigError, match="fivecrop, randaug, tencrop"):
        tte_transform(32, "sixcrop")
    with pytest.raises(ConfigError, match="expand"):
        tte_transform(32, expand=-1)


def test_average_crop_logits_one_batch_raw_logits():
    torch.manual_seed(0)
    crops = torch.randn(3, 5, 3, 8, 8)
    proj = torch.randn(3, 4)
    calls = []

    def model_fn(x):
        calls.append(x.shape)
        return 25 * x.mean((2, 3)) @ proj

    out = average_crop_logits(model_fn, crops)
    assert calls == [torch.Size([15, 3, 8, 8])]
    expected = torch.stack([torch.stack([model_fn(crops[b, k : k + 1])[0] for k in range(5)]).mean(0) for b in range(3)])
    assert out.shape == (3, 4) and torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(average_crop_logits(model_fn, crops[:, 0]), model_fn(crops[:, 0]))
    with pytest.raises(DataError, match="crops"):
        average_crop_logits(model_fn, torch.zeros(3, 8, 8))


def test_transforms_pickle_for_spawned_workers():
    for tf in (lift_train_transform(32), eval_transform(32), tte_transform(32, "tencrop"),
               minimalist_train_transform(32, 5, epoch=2)):
        assert pickle.loads(pickle.dumps(tf))(coord_image(50, 40)).shape[-1] == 32


def test_uint8_path_gives_the_same_values_as_totensor_normalize():
    """Workers ship uint8 and the trainer normalises per batch: identical inputs to the model."""
    from PIL import Image

    from lift_dist.transforms import SharedEpoch, lift_train_transform, minimalist_train_transform, normalize_uint8, uint8_output

    g = torch.Generator().manual_seed(0)
    img = Image.fromarray((torch.rand(90, 120, 3, generator=g) * 255).to(torch.uint8).numpy())
    for tf in (lift_train_transform(48), minimalist_train_transform(48, 5, epoch=SharedEpoch(2))):
        u8 = uint8_output(tf)
        torch.manual_seed(7)
        ref = tf(img)
        torch.manual_seed(7)
        out = u8(img)
        assert out.dtype == torch.uint8 and type(u8) is type(tf)
        torch.testing.assert_close(normalize_uint8(out[None])[0], ref, atol=1e-6, rtol=0)


def test_uint8_tensor_images_give_the_pil_values():
    """The training stream decodes to uint8 tensors: every training transform must draw the same crops
    and give PIL's pixels (antialiased bilinear and bicubic, up to rounding: at most two grey levels,
    well under one on average; another crop of this photo would differ by tens)."""
    from lift_dist.shards.synthetic import photo_jpegs
    from lift_dist.transforms import SharedEpoch, uint8_output

    pil = Image.open(__import__("io").BytesIO(next(iter(photo_jpegs(1, 341, 256, seed=3))))).convert("RGB")
    tensor = torch.from_numpy(np.array(pil)).permute(2, 0, 1)  # channels-last in memory, as decoded (and as shipped)
    transforms = [lift_train_transform(224), lift_train_transform(96, "bicubic"), eval_transform(224),
                  eval_transform(64, "bicubic"), minimalist_train_transform(224, 5, epoch=SharedEpoch(0)),
                  minimalist_train_transform(128, 5, epoch=SharedEpoch(4))]
    for tf in transforms:
        u8 = uint8_output(tf)
        for seed in range(6):  # small and large crops, flipped and not
            torch.manual_seed(seed)
            ref = u8(pil)
            torch.manual_seed(seed)
            out = u8(tensor)
            assert out.dtype == torch.uint8 and out.shape == ref.shape and out.permute(1, 2, 0).is_contiguous(), tf
            diff = (out.int() - ref.int()).abs()
            assert diff.max() <= 2 and diff.float().mean() < 0.3, (tf, seed, diff.max().item())
    # A plain float pipeline on a tensor is not what the uint8 path is for: it says what it expected.
    with pytest.raises(DataError, match="uint8"):
        uint8_output(eval_transform(32))(tensor.float())
