"""The training stream's worker path: images reach the batches exactly as decoded in-process, through
reused shared buffers (lift_dist.data.chunk_slots), whatever the consumer keeps."""

from __future__ import annotations

import torch

from lift_dist.data.chunk_slots import PER_WORKER
from lift_dist.data.manifest import read_manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, loader_batches, make_loader, rebatch
from lift_dist.transforms import eval_transform, lift_train_transform, normalize_uint8, tte_transform, uint8_output


def stream(shards, tf, chunk: int = 4) -> ShardStream:
    m = read_manifest(shards, "train")
    return ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(), uint8_output(tf), train=True,
                       num_classes=m.num_classes, shuffle_buffer=0, chunk=chunk, decode_to_tensor=True)


def by_key(batches) -> dict:
    return {k: (x.clone(), int(y)) for xs, ys, keys in batches for x, y, k in zip(xs, ys, keys)}


def test_test_time_ensembling_views_reach_the_batches(demo_shards):
    """Evaluation with TTE gives each sample a stack of normalised crops, (views, 3, H, W): the workers
    send those as they are."""
    m = read_manifest(demo_shards, "train")

    def make() -> ShardStream:
        return ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(), tte_transform(32),
                           train=False, num_classes=m.num_classes, chunk=4)  # as evaluate builds it

    ref = by_key(loader_batches(make_loader(make(), 0), 7))
    got = by_key(loader_batches(make_loader(make(), 2), 7))
    assert got.keys() == ref.keys() and len(got) == 201
    assert all(got[k][0].shape == (5, 3, 32, 32) and torch.equal(got[k][0], ref[k][0]) for k in ref)


def test_worker_batches_equal_in_process_ones_through_reused_buffers(demo_shards):
    tf = lift_train_transform(32)
    ref = by_key(loader_batches(make_loader(stream(demo_shards, tf), 0), 7))
    s = stream(demo_shards, tf)
    storages, chunks = set(), 0

    def watched(it):
        nonlocal chunks
        for chunk in it:
            storages.add(chunk[0].untyped_storage().data_ptr())
            chunks += 1
            yield chunk

    kept = list(rebatch(watched(iter(make_loader(s, 2))), 7, s.release_chunk))  # every batch kept to the end
    got = by_key(kept)
    assert got.keys() == ref.keys() and len(got) == 201
    assert all(torch.equal(got[k][0], ref[k][0]) and got[k][1] == ref[k][1] for k in ref)
    assert chunks > 2 * 2 * PER_WORKER and len(storages) <= 2 * PER_WORKER  # buffers were reused, not reallocated
    # Channels-last uint8 batches normalise to the planar float tensors of the float transform.
    x = kept[0][0]
    assert x.dtype == torch.uint8 and x.permute(0, 2, 3, 1).is_contiguous()
    assert normalize_uint8(x).is_contiguous()


def test_a_consumer_that_never_releases_still_gets_every_image(demo_shards):
    tf = eval_transform(32)
    ref = by_key(loader_batches(make_loader(stream(demo_shards, tf), 0), 5))
    got = by_key(rebatch(iter(make_loader(stream(demo_shards, tf), 2)), 5))  # no release: fresh tensors past the buffers
    assert got.keys() == ref.keys() and all(torch.equal(got[k][0], ref[k][0]) for k in ref)


def test_device_decoding_gives_the_worker_paths_batches(demo_shards):
    """data.decode_device=cuda's code path, run on the CPU: workers ship JPEG bytes and the crop/flip
    draws; the main process decodes and crops. Same augmentations, same pixels, for every train transform."""
    from lift_dist.data.device_decode import DeviceDecoder
    from lift_dist.transforms import SharedEpoch, minimalist_train_transform

    m = read_manifest(demo_shards, "train")
    for tf in (lift_train_transform(32), minimalist_train_transform(32, 4, epoch=SharedEpoch(1)), eval_transform(32)):
        def make(defer: bool, tf=tf) -> ShardStream:
            return ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(), uint8_output(tf),
                               train=True, num_classes=m.num_classes, shuffle_buffer=20, seed=1, chunk=4, decode_to_tensor=True,
                               defer_decode=defer)
        ref = by_key(loader_batches(make_loader(make(False), 2), 7))
        got = by_key(rebatch(DeviceDecoder(torch.device("cpu"))(iter(make_loader(make(True), 2))), 7))
        assert got.keys() == ref.keys() and len(got) == 201
        assert all(torch.equal(got[k][0], ref[k][0]) and got[k][1] == ref[k][1] for k in ref), tf


def test_device_decoding_names_an_undecodable_sample(demo_shards, tmp_path):
    import pytest
    from support.data import damaged_copy

    from lift_dist.data.device_decode import DeviceDecoder
    from lift_dist.errors import DataError

    def corrupt(entries):
        name, data = next((n, d) for n, d in entries if n.endswith(".jpg"))
        return [(n, d[:600] + bytes(len(d) - 600) if n == name else d) for n, d in entries], name.rsplit(".", 1)[0]

    damaged_copy(demo_shards, tmp_path / "bad", "train", lambda e: corrupt(e)[0])
    m = read_manifest(tmp_path / "bad", "train")
    s = ShardStream(m, ShardPlan(len(m.shard_files), m.shard_samples, 0, 1), 0, FixedEpoch(), uint8_output(eval_transform(32)),
                    train=False, num_classes=m.num_classes, decode_to_tensor=True, defer_decode=True)
    with pytest.raises(DataError, match=r"sample '[^']+' in .*train-000000\.tar: image cannot be decoded"):
        list(DeviceDecoder(torch.device("cpu"))(iter(make_loader(s, 0))))


def test_device_decoding_is_refused_without_a_gpu():
    import pytest

    from lift_dist.config import load_config
    from lift_dist.engine.preflight import check_decode_device
    from lift_dist.errors import ConfigError

    cfg = load_config(None, None, ["data.decode_device=cuda", "device=cpu"])
    with pytest.raises(ConfigError, match=r"data.decode_device=cuda decodes JPEGs on the training GPU, but device=cpu; "
                                          r"use data.decode_device=cpu"):
        check_decode_device(cfg, [])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device=auto and no CUDA GPU is visible"):
            check_decode_device(load_config(None, None, ["data.decode_device=cuda"]), [])
