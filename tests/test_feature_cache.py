"""Cached frozen features (data.feature_cache): same training as from images, built once, keyed by config."""

import json
import subprocess
import sys

import pytest
import torch
from support.runs import REPO, TINY, latest_weights, run_env, run_in_process, run_side_by_side, run_torchrun

from lift_dist.config import ModelConfig, load_config
from lift_dist.data.manifest import read_manifest
from lift_dist.errors import ConfigError
from lift_dist.model.lift_model import build_model


@pytest.mark.parametrize("peft, layers, expected", [("none", None, "L+1"), ("partial", "last:1", "L-1"),
                                                     ("full", "last:2", "L-2"), ("adaptformer", None, 0)])
def test_frozen_prefix_and_split_forward(peft, layers, expected):
    model, _ = build_model(ModelConfig(name="tiny", peft=[peft], layers=layers, head_init="random"), 5)
    enc = model.encoder
    L = enc.num_layers
    cut = enc.frozen_prefix()
    assert cut == {"L+1": L + 1, "L-1": L - 1, "L-2": L - 2, 0: 0}[expected]
    x = torch.randn(3, 3, enc.image_size, enc.image_size)
    with torch.no_grad():
        for c in {cut, 1, L, L + 1}:
            state = enc.forward_to(x, c)
            tokens = 1 if c == L else enc.seq_len  # the last block's output is its CLS token alone
            assert state.shape == ((3, enc.width) if c > L else (3, tokens, enc.width))
            torch.testing.assert_close(model(state, cached_from=c), model(x), atol=1e-5, rtol=1e-5)


def train_cmd(shards, out, *extra) -> list[str]:
    return [sys.executable, "-m", "lift_dist", "train", "--shards", str(shards), "--out", str(out), "--epochs", "2",
            "--batch-size", "256", *TINY, "--set", "data.augment=none", "--set", "data.tte=false",
            "--set", "model.head_init=random", "--set", "optim.lr=0.5", *extra]


def train(shards, out, *extra):
    p = subprocess.run(train_cmd(shards, out, *extra), capture_output=True, text=True, env=run_env(), timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout, json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("peft", ["none", "partial"])
def test_cached_training_equals_image_training(demo_shards, tmp_path, peft):
    """With one step per epoch (batch = the whole training set) sample order cannot matter, so the run
    from cached features must train the same weights as the run from images."""
    module = ["--peft", peft] + (["--set", "model.layers=last:1"] if peft == "partial" else [])
    cache = tmp_path / "cache"
    p, c = run_side_by_side(train_cmd(demo_shards, tmp_path / "plain", *module),
                            train_cmd(demo_shards, tmp_path / "cached", *module, "--set", f"data.feature_cache={cache}"))
    plain, cached = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("plain", "cached"))
    # A batch above the training set is allowed (full-batch steps), and said.
    assert "optim.batch_size=256 is larger than the 201 samples of 'train': every epoch is a single step" in p.stdout
    assert "building 6 of 6 shard(s)" in c.stdout
    a, b = latest_weights(tmp_path / "plain"), latest_weights(tmp_path / "cached")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4)
    assert cached["overall"] == pytest.approx(plain["overall"], abs=1 / 60 + 1e-9)  # at most one test image flips
    # A second run reuses the cache.
    log, again = train(demo_shards, tmp_path / "again", *module, "--set", f"data.feature_cache={cache}")
    assert "complete, reused" in log and again["overall"] == cached["overall"]
    keys = sorted(p.name for p in cache.iterdir())
    assert len(keys) == 1
    meta = json.loads((cache / keys[0] / "meta.json").read_text())
    tiny, _ = build_model(ModelConfig(name="tiny", peft=[peft], head_init="random"), 10)
    assert meta["activation"] == type(tiny.encoder.blocks[0].block.mlp.gelu).__name__ and meta["interpolation"] == "bilinear"
    assert meta["num_samples"] == read_manifest(demo_shards, "train").num_samples
    assert meta["cut"] == (5 if peft == "none" else 3)  # tiny has 4 blocks: after ln_post / before the last block


def test_cache_refuses_augmentation_and_modules_in_the_first_block(demo_shards, tmp_path):
    base = [sys.executable, "-m", "lift_dist", "train", "--shards", str(demo_shards), "--out", str(tmp_path / "r"), *TINY,
            "--set", f"data.feature_cache={tmp_path / 'c'}"]
    p = run_in_process(*base[3:], "--peft", "none")  # a config error: refused at load time
    assert p.returncode == 2 and "data.feature_cache needs data.augment=none (got 'lift')" in p.stderr
    # Modules in block 0 leave nothing frozen to cache: refused by config validation, before the run
    # directory, the cache directory, a process group or a model exist.
    for peft in ("adaptformer", "vpt-shallow"):
        p = subprocess.run(base + ["--peft", peft, "--set", "data.augment=none"], capture_output=True, text=True,
                           env=run_env(), timeout=300, cwd=REPO)
        assert p.returncode == 2 and "no frozen part is left to cache" in p.stderr and "Traceback" not in p.stderr
        assert "no frozen part is left to cache" in p.stderr.strip().splitlines()[-1], p.stderr  # one line, at the end
        assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()
    cache = [f"data.feature_cache={tmp_path / 'c'}", "data.augment=none", "model.peft=[lora]"]
    with pytest.raises(ConfigError, match="no frozen part is left to cache"):
        load_config(overrides=cache)
    assert load_config(overrides=[*cache, "model.layers=last:2"]).data.feature_cache  # ViT-B-16's blocks 10 and 11 only: 0-9 cached


@pytest.mark.slow
def test_cached_two_rank_run_resumes_exactly_and_new_settings_get_a_new_key(demo_shards, tmp_path):
    """2 ranks, several steps per epoch (the cache's shard split and seeded shuffle), stopped mid-epoch
    and resumed: bit-identical to the uninterrupted run. A resume with another data order is refused."""
    cache = tmp_path / "cache"
    args = ["--shards", str(demo_shards), "--epochs", "2", "--batch-size", "16", *TINY, "--peft", "none",
            "--set", "data.augment=none", "--set", "data.tte=false", "--set", f"data.feature_cache={cache}"]
    run_torchrun(2, *args, "--out", str(tmp_path / "full"))
    run_torchrun(2, *args, "--out", str(tmp_path / "cut"), "--set", "max_steps=9")
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-00000009" / "state.json").read_text())
    assert state["epoch"] == 0 and state["step_in_epoch"] == 9  # stopped inside the first epoch
    refused = run_torchrun(2, *args, "--out", str(tmp_path / "cut"), "--resume", "latest", "--set", "seed=1", check=False)
    assert refused.returncode != 0 and "was written mid-epoch by a run with other settings (seed 0 -> 1)" in refused.stderr + refused.stdout
    run_torchrun(2, *args, "--out", str(tmp_path / "cut"), "--resume", "latest")
    a, b = latest_weights(tmp_path / "full"), latest_weights(tmp_path / "cut")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)
    history = [json.loads(line) for line in (tmp_path / "cut" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]  # the cut epoch is logged once, by the resumed run
    n = read_manifest(demo_shards, "train").num_samples
    # The cut epoch's sums travel in the checkpoint: its line counts every sample, before and after the resume.
    assert history[0]["samples"] == history[1]["samples"] == n
    # Another interpolation changes the cached features: a second key beside the first.
    run_torchrun(2, *args, "--out", str(tmp_path / "bicubic"), "--set", "data.interpolation=bicubic", "--set", "max_steps=1")
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
