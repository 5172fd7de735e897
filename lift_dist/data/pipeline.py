"""WebDataset input pipeline for training and evaluation.

Per epoch, on every rank alike: the shard list is shuffled with (seed, epoch); rank r takes every
world-th shard, and data-loader worker w every num_workers-th of those. Each worker reads its tars,
shuffles samples through a seeded buffer, then decodes (after the shuffle, so the buffer holds bytes)
and transforms. The main process re-batches to exact micro-batches.

Augmentation randomness is seeded per sample from (seed, epoch, sample key), so a run is reproducible
whatever the number of workers, and a resumed epoch replays exactly.

Epoch modes: `exact` reads every shard once per epoch (ranks may hold different sample counts; the
trainer pads the shorter ranks with zero-weight batches so all ranks take the same number of steps);
`resampled` draws shards with replacement, each rank yielding ceil(N / world) samples.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import math
import multiprocessing
import os
import random
import re
import signal
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.cache import FileCache

from lift_dist.data import location
from lift_dist.data.chunk_slots import ChunkSlots
from lift_dist.data.device_decode import DeferredImage, jpeg_size, plan_geometry
from lift_dist.data.jpeg import decode_rgb_draft
from lift_dist.data.manifest import IMAGE_KEYS, Manifest
from lift_dist.errors import DataError
from lift_dist.transforms import stack_images


def _stable_seed(*parts) -> int:
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def shard_samples(url, retries: int = 0, cache: FileCache | None = None) -> Iterator[dict]:
    """The samples of one shard, read with webdataset. A read that breaks off (a dropped connection, a
    transient error) is retried with back-off from the start of the shard, skipping what was already
    delivered, so the stream is the same as an unbroken read; past `retries` a DataError names the URL.
    With `cache` (webdataset's FileCache) a remote shard is downloaded once and read locally."""
    delivered, attempt = 0, 0
    while True:
        try:
            source = cache.get_file(str(url)) if cache is not None else str(url)
            for i, sample in enumerate(wds.tarfile_to_samples(handler=wds.reraise_exception)([{"url": source}])):
                if i >= delivered:
                    delivered += 1
                    sample["__url__"] = str(url)
                    yield sample
            return
        except Exception as e:  # tar errors of a cut stream, curl's exit status, a cache download that failed
            if attempt >= retries:
                again = f" after {retries} retries" if retries else ""
                raise DataError(f"shard {url} cannot be read{again} ({location.describe_failure(url, e)})") from None
            time.sleep(location.backoff(attempt))
            attempt += 1


def _cache_name(url: str) -> str:
    # The whole URL in the name: shard sets all have a train-000000.tar (webdataset keeps the basename).
    return hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + url.rstrip("/").rsplit("/", 1)[-1].replace(" ", "_")[-64:]


def shard_cache(directory: str | None) -> FileCache | None:
    """webdataset's file cache (downloads to a temporary name, then renames): data.shard_cache."""
    return FileCache(directory, url_to_name=_cache_name, validator=None) if directory else None


@dataclass
class ShardPlan:
    """Which shards each rank reads in an epoch; identical on every rank (no communication)."""

    num_shards: int
    shard_samples: list[int]
    seed: int
    world: int

    def epoch_order(self, epoch: int) -> list[int]:
        order = list(range(self.num_shards))
        random.Random(_stable_seed("shards", self.seed, epoch)).shuffle(order)
        return order

    def rank_shards(self, epoch: int, rank: int, shuffle: bool = True) -> list[int]:
        order = self.epoch_order(epoch) if shuffle else list(range(self.num_shards))
        return order[rank :: self.world]

    def rank_samples(self, epoch: int, rank: int, shuffle: bool = True) -> int:
        return sum(self.shard_samples[i] for i in self.rank_shards(epoch, rank, shuffle))


class FixedEpoch:
    """An epoch value that never changes (evaluation, prediction, feature extraction)."""

    def __init__(self, value: int = 0):
        self.value = value

    def get(self) -> int:
        return self.value


def _jpeg_decoder():
    """libjpeg-turbo straight to a (3, H, W) uint8 tensor: TorchCodec where installed (it supersedes
    torchvision's image decoders, deprecated since torchvision 0.29), else torchvision's."""
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: PLC0415  (optional dependency)

        return lambda data: decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode="RGB")
    except Exception:  # not installed, or built for another torch
        with warnings.catch_warnings():  # torchvision.io warns on import that TorchCodec supersedes it
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg  # noqa: PLC0415
        return lambda data: decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)


_decode_jpeg = None


def _draft_decode(img: Image.Image, min_side: int | None) -> Image.Image:
    """RGB pixels of an opened image; a large JPEG at the smallest DCT scale keeping min_side."""
    if _draft_helps(img, min_side):
        img.draft("RGB", _draft_request(img.size, min_side))
    return img.convert("RGB")


def _draft_request(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    k = min_side / min(size)
    return max(1, round(size[0] * k)), max(1, round(size[1] * k))


def _draft_helps(img: Image.Image, min_side: int | None) -> bool:
    return bool(min_side) and img.format == "JPEG" and min(img.size) >= 2 * min_side


def _decode_tensor(data: bytes, min_side: int | None) -> torch.Tensor:
    """(3, H, W) uint8, channels-last in memory. JPEGs go straight to a tensor, at full size
    (`_jpeg_decoder`) or, where draft mode helps, at PIL's reduced DCT scale (`decode_rgb_draft`): no
    PIL image, no copy. Other formats and modes, and JPEGs libjpeg-turbo doubts, go through PIL."""
    global _decode_jpeg
    img = Image.open(io.BytesIO(data))  # reads the header only (format, size): ~20 us
    draft = _draft_helps(img, min_side)
    if img.format == "JPEG" and not draft:
        if _decode_jpeg is None:
            _decode_jpeg = _jpeg_decoder()
        return _decode_jpeg(bytearray(data))  # bytearray: torch wants a writable buffer
    if draft and (hwc := decode_rgb_draft(data, img, _draft_request(img.size, min_side))) is not None:
        return torch.from_numpy(hwc).permute(2, 0, 1)  # PIL's draft pixels, without PIL's copies
    return torch.from_numpy(np.array(_draft_decode(img, min_side))).permute(2, 0, 1)


def sample_fields(sample: dict, num_classes: int) -> tuple[bytes, int, str, str]:
    """(image bytes, label, key, "sample 'KEY' in SHARD") of a shard sample, its label checked."""
    key = sample.get("__key__", "?")
    where = f"sample '{key}' in {sample.get('__url__', '?')}"
    img_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if img_key is None or "cls" not in sample:
        raise DataError(f"{where} lacks an image or a 'cls' entry (has: {', '.join(k for k in sample if not k.startswith('__'))})")
    try:
        label = int(sample["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{where}: 'cls' is not an integer label: {sample['cls'][:20]!r}") from None
    if not 0 <= label < num_classes:
        raise DataError(f"{where}: label {label} is outside 0..{num_classes - 1} of the manifest")
    return sample[img_key], label, key, where


def decode_image(data: bytes, where: str, min_side: int | None = None, as_tensor: bool = False):
    """A PIL image, or with `as_tensor` a (3, H, W) uint8 tensor. With `min_side`, a JPEG is decoded
    at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter side is still >= min_side (PIL draft
    mode): shards built with --no-resize then cost little more than resized ones."""
    try:
        return _decode_tensor(data, min_side) if as_tensor else _draft_decode(Image.open(io.BytesIO(data)), min_side)
    except Exception as e:
        msg = str(e).strip()
        if re.match(r"decode_\w+, \S+:\d+, ", msg):  # the decoders prefix their C++ source location
            msg = msg.split(", ", 2)[2]
        raise DataError(f"{where}: image cannot be decoded ({type(e).__name__}: {msg})") from None


def decode_sample(sample: dict, num_classes: int, min_side: int | None = None, as_tensor: bool = False):
    """(image, label, key) of a shard sample (see `decode_image`)."""
    data, label, key, where = sample_fields(sample, num_classes)
    return decode_image(data, where, min_side, as_tensor), label, key


class ShardStream(IterableDataset):
    """One rank's stream of (images, labels, sample keys) chunks for the current epoch."""

    def __init__(
        self,
        manifest: Manifest,
        plan: ShardPlan,
        rank: int,
        epoch_value,  # object with .get() (SharedEpoch) shared with persistent workers
        transform: Callable,
        *,
        train: bool,
        num_classes: int,
        shuffle_buffer: int = 2000,
        resampled: bool = False,
        seed: int = 0,
        samples_per_rank: int | None = None,
        chunk: int = 16,
        decode_min_side: int | None = None,
        decode_to_tensor: bool = False,
        defer_decode: bool = False,
        reseed: bool | None = None,
        retries: int | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__()
        self.files = [str(f) for f in manifest.shard_files]
        self.expected = {str(f): n for f, n in zip(manifest.shard_files, manifest.shard_samples)}
        self.plan, self.rank, self.epoch_value = plan, rank, epoch_value
        self.transform, self.train, self.num_classes = transform, train, num_classes
        self.shuffle_buffer, self.resampled, self.seed = shuffle_buffer, resampled, seed
        self.samples_per_rank, self.chunk, self.decode_min_side = samples_per_rank, chunk, decode_min_side
        self.decode_to_tensor = decode_to_tensor  # the transform must take uint8 tensors (transforms.uint8_output)
        self.defer_decode = defer_decode  # JPEGs decoded by the main process on its device (needs decode_to_tensor)
        self.reseed = train if reseed is None else reseed  # seed the transform's randomness per sample
        self.retries = (3 if manifest.remote else 0) if retries is None else retries
        self.cache_dir = cache_dir
        self.slots = ChunkSlots()

    def _urls(self, epoch: int, worker: int, num_workers: int) -> Iterator[dict]:
        if self.resampled:
            rng = random.Random(_stable_seed("resample", self.seed, epoch, self.rank, worker))
            while True:
                yield {"url": self.files[rng.randrange(len(self.files))]}
        mine = self.plan.rank_shards(epoch, self.rank, shuffle=self.train)[worker::num_workers]
        for i in mine:
            yield {"url": self.files[i]}

    def _quota(self, worker: int, num_workers: int) -> int | None:
        if not self.resampled:
            return None
        total = self.samples_per_rank
        return total // num_workers + (1 if worker < total % num_workers else 0)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = int(self.epoch_value.get())
        cache = shard_cache(self.cache_dir)
        samples = (s for u in self._urls(epoch, worker, num_workers) for s in shard_samples(u["url"], self.retries, cache))
        if self.train and self.shuffle_buffer > 1:
            rng = random.Random(_stable_seed("buffer", self.seed, epoch, self.rank, worker))
            samples = wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=rng)(samples)
        quota = self._quota(worker, num_workers)
        seen: dict[str, int] = {}
        images, labels, keys = [], [], []
        produced = 0
        for sample in samples:
            if quota is not None and produced >= quota:
                break
            url = sample.get("__url__", "?")
            seen[url] = seen.get(url, 0) + 1
            data, label, key, where = sample_fields(sample, self.num_classes)
            size = jpeg_size(data) if self.defer_decode else None  # (device decoding: the main process decodes)
            img = None if size else decode_image(data, where, self.decode_min_side, self.decode_to_tensor)
            if self.reseed:
                # Per-sample seed: augmentation independent of worker count and replayable.
                # (CPU generator only: torch.manual_seed also queues CUDA/XPU seeding with a stack trace, per sample.)
                torch.default_generator.manual_seed(_stable_seed("aug", self.seed, epoch, key, seen[url] if self.resampled else 0))
            images.append(DeferredImage(data, plan_geometry(self.transform, *size), where) if size else self.transform(img))
            labels.append(label)
            keys.append(key)
            produced += 1
            if len(images) == self.chunk:
                yield self._chunk(images, labels, keys, info)
                images, labels, keys = [], [], []
        if images:
            yield self._chunk(images, labels, keys, info)
        if not self.resampled:
            for url, n in seen.items():
                if n != self.expected.get(url, n):
                    raise DataError(f"shard {url} holds {n} samples but its manifest says {self.expected[url]}; "
                                    "rebuild or re-verify the shard set")


    def _chunk(self, images: list, labels: list[int], keys: list[str], info) -> tuple:
        """(images, labels, keys) -- from a loader worker with the shared buffer's slot as a 4th item;
        with device decoding the images stay a list (lift_dist.data.device_decode.DeviceDecoder)."""
        if self.defer_decode:
            return images, torch.tensor(labels), keys
        shared = self.slots.stack(images, info.id) if info is not None else None
        if shared is None:
            return stack_images(images), torch.tensor(labels), keys
        return shared[0], torch.tensor(labels), keys, shared[1]

    def release_chunk(self, slot: int) -> None:
        self.slots.release(slot)


def rebatch(chunks: Iterator[tuple], batch_size: int, release: Callable[[int], None] | None = None,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Re-cut worker chunks into exact batches (the last may be short); `release(slot)` frees a
    chunk's shared buffer once it is copied out (lift_dist.data.chunk_slots)."""
    imgs, labels, keys, n, held = [], [], [], 0, []
    for chunk in chunks:
        x, y, k = chunk[:3]
        if len(chunk) > 3:
            held.append(chunk[3])
        imgs.append(x)
        labels.append(y)
        keys.extend(k)
        n += len(y)
        while n >= batch_size:
            X, Y = torch.cat(imgs), torch.cat(labels)  # copies: the chunks' buffers are free from here
            held = _released(held, release)
            yield X[:batch_size], Y[:batch_size], keys[:batch_size]
            imgs, labels, keys, n = [X[batch_size:]], [Y[batch_size:]], keys[batch_size:], n - batch_size
    if n:
        X, Y = torch.cat(imgs), torch.cat(labels)
        _released(held, release)
        yield X, Y, keys


def _released(slots: list[int], release: Callable[[int], None] | None) -> list:
    if release is not None:
        for slot in slots:
            release(slot)
    return []


def loader_batches(loader: DataLoader, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Exact batches from a ShardStream loader (`make_loader`), its workers' buffers reused."""
    return rebatch(iter(loader), batch_size, loader.dataset.release_chunk)


class WorkerSignals:
    """Slurm (and `kill -TERM -PGID`) signal every process of a job at once: a loader worker that died of
    that SIGTERM would crash the trainer before it could write its stop checkpoint. So a worker ignores
    SIGTERM while its main process carries on, and exits on it once the main process is exiting
    (multiprocessing's exit handler terminates daemonic workers with SIGTERM too). SIGINT is left to the
    main process."""

    def __init__(self):
        # lock=False: a raw shared byte travels to fork, spawn and forkserver workers alike.
        self.main_exiting = multiprocessing.Value("b", 0, lock=False)
        atexit.register(self.exiting)  # runs before multiprocessing's own exit handler (registered earlier)

    def exiting(self) -> None:
        self.main_exiting.value = 1

    def __call__(self, worker_id: int) -> None:  # DataLoader's worker_init_fn
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_sigterm(self, signum, frame) -> None:
        if self.main_exiting.value:
            os._exit(0)


def make_loader(stream: ShardStream, workers: int) -> DataLoader:
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=WorkerSignals() if workers > 0 else None,
    )


def steps_in_epoch(counts: list[int], micro: int, accum: int) -> int:
    """Optimizer steps per epoch when every rank must take the same number of micro-steps."""
    micro_steps = max(math.ceil(c / micro) for c in counts)
    return math.ceil(micro_steps / accum)


def sample_weights_for_step(counts: list[int], micro: int, accum: int, step: int) -> int:
    """Real (non-padding) samples over all ranks in optimizer step `step` of an epoch."""
    total = 0
    for c in counts:
        lo = step * accum * micro
        total += max(0, min(c, lo + accum * micro) - lo)
    return total
