"""Checkpoints: data only (a planted pickle never runs), verified against their manifest, pruned only within
their own run, and read back into the optimizer and RNG exactly."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from support.runs import free_port

from lift_dist.config import OptimConfig, load_config
from lift_dist.engine import checkpoint
from lift_dist.engine.checkpoint import Checkpointer
from lift_dist.engine.optimizer import build_optimizer
from lift_dist.engine.statefile import load_state, save_state
from lift_dist.errors import DataError, RunDirError
from lift_dist.model.lift_model import build_model
from lift_dist.run_dir import RunDir


class Evil:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def process_group():
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def tiny_model_and_optimizer():
    cfg = load_config(None, None, ["model.name=tiny", "model.pretrained=null", "model.head_init=random"])
    model, _ = build_model(cfg.model, 5)
    params = [p for _, p in model.trainable_named_parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    loss = model(torch.randn(2, 3, 64, 64)).sum()
    loss.backward()
    opt.step()  # momentum buffers exist
    return model, opt


def save_one(run: RunDir, step: int, run_id: str = "mine", keep: int = 0):
    model, opt = tiny_model_and_optimizer()
    ck = Checkpointer(run, rank=0, world=1, zero_stage=0, keep=keep, run_id=run_id)
    path = ck.save(step, model, opt, {"epoch": 0, "step_in_epoch": step, "global_step": step, "run": {}},
                   {"meter": {"loss_sum": 1.5, "loss_n": 3}})
    return path, model, opt


def rewrite_manifest(path):
    """What an attacker who can write the run directory also does: make the manifest match the files."""
    m = json.loads((path / "manifest.json").read_text())
    for name in m["files"]:
        data = (path / name).read_bytes()
        m["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(m))


def test_round_trip_restores_optimizer_rng_and_sums(tmp_path, process_group):
    run = RunDir(tmp_path / "run")
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    path, model, opt = save_one(run, 7)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt = checkpoint.resolve(run, "latest")
    assert ckpt.path == path and ckpt.step == 7 and not ckpt.legacy
    model2, opt2 = tiny_model_and_optimizer()
    saved = Checkpointer(run, 0, 1, 0, 0, "mine").load(ckpt, model2, opt2)
    assert saved["meter"] == {"loss_sum": 1.5, "loss_n": 3}
    for (n, a), (_, b) in zip(model.trainable_named_parameters(), model2.trainable_named_parameters()):
        assert torch.equal(a, b), n
    for s1, s2 in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(s1["momentum_buffer"], s2["momentum_buffer"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


@pytest.mark.parametrize("victim", ["trainable.safetensors", "optimizer-rank0.safetensors", "optimizer-rank0.json",
                                    "rank-0.safetensors", "rank-0.json", "state.json", "manifest.json"])
def test_a_planted_pickle_never_runs_and_is_named(tmp_path, process_group, victim):
    run = RunDir(tmp_path / "run")
    path, _, _ = save_one(run, 3)
    marker = tmp_path / "pwned"
    (path / victim).write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(DataError, match=rf"{path / victim}|{path / 'manifest.json'}"):
        Checkpointer(run, 0, 1, 0, 0, "mine").load(checkpoint.verify(path), *tiny_model_and_optimizer())
    if victim != "manifest.json":  # with a manifest that matches, the file itself must be refused as data
        rewrite_manifest(path)
        with pytest.raises(DataError, match=str(path / victim)):
            Checkpointer(run, 0, 1, 0, 0, "mine").load(checkpoint.verify(path), *tiny_model_and_optimizer())
    assert not marker.exists()


@pytest.mark.parametrize("victim", ["optimizer-rank0.pt", "rng-rank0.pt"])
def test_checkpoints_of_lift_dist_0_1_are_read_without_unpickling(tmp_path, process_group, victim):
    """Old checkpoints (pickled optimizer and RNG files) still resume: the optimizer state through
    torch.load(weights_only=True), the RNG pickle not at all; a crafted file is refused, never run."""
    run = RunDir(tmp_path / "run")
    path, model, opt = save_one(run, 3)
    for f in path.iterdir():
        if f.name not in ("trainable.safetensors", "state.json"):
            f.unlink()
    torch.save(opt.state_dict(), path / "optimizer-rank0.pt")
    (path / "rng-rank0.pt").write_bytes(pickle.dumps({"torch": torch.get_rng_state()}))
    ckpt = checkpoint.verify(path)
    assert ckpt.legacy
    Checkpointer(run, 0, 1, 0, 0, "mine").load(ckpt, *tiny_model_and_optimizer())  # a genuine old one loads
    marker = tmp_path / "pwned"
    (path / victim).write_bytes(pickle.dumps(Evil(marker)))
    if victim == "optimizer-rank0.pt":
        with pytest.raises(DataError, match=rf"{path / victim} cannot be read as data only"):
            Checkpointer(run, 0, 1, 0, 0, "mine").load(ckpt, *tiny_model_and_optimizer())
    else:
        Checkpointer(run, 0, 1, 0, 0, "mine").load(ckpt, *tiny_model_and_optimizer())
    assert not marker.exists()


def test_damaged_latest_falls_back_to_the_newest_complete_one(tmp_path, process_group):
    run = RunDir(tmp_path / "run")
    older, _, _ = save_one(run, 2)
    newest, _, _ = save_one(run, 4)
    (newest / "optimizer-rank0.json").write_text((newest / "optimizer-rank0.json").read_text()[:40])  # truncated
    notes = []
    ckpt = checkpoint.resolve(run, "latest", log=notes.append)
    assert ckpt.path == older
    assert notes and f"{newest / 'optimizer-rank0.json'} is damaged" in notes[0] and str(older) in notes[0]
    with pytest.raises(DataError, match=f"{newest / 'optimizer-rank0.json'} is damaged"):
        checkpoint.resolve(run, str(newest))  # an explicit checkpoint never falls back
    shutil.rmtree(older)
    with pytest.raises(DataError, match="no complete checkpoint in"):
        checkpoint.resolve(run, "latest")


def _edit_json(path, edit):
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("file, edit, message", [
    ("state.json", lambda d: d.update(global_step="seven"), "state.json: 'global_step' is 'seven'; it must be an integer >= 0"),
    ("state.json", lambda d: d.update(epoch=-5), "state.json: 'epoch' is -5; it must be an integer >= 0"),
    ("state.json", lambda d: d.update(step_in_epoch="3"), "state.json: 'step_in_epoch' is '3'; it must be an integer >= 0"),
    ("state.json", lambda d: d.update(run=[1, 2]), "state.json: 'run' must be an object of the run's settings, not list"),
    ("rank-0.json", lambda d: d["tree"].pop("rng"), "rank-0.json: 'rng' is not a saved random-generator state"),
    ("rank-0.json", lambda d: d["tree"]["rng"].update(python=5), "rank-0.json: 'rng' is not a saved random-generator state"),
    ("manifest.json", lambda d: d["files"].update({"state.json": 1}), "manifest.json is damaged: 'files' must map each file"),
])
def test_a_checkpoint_whose_values_have_the_wrong_types_is_damage_and_gives_way(tmp_path, process_group, file, edit, message):
    run = RunDir(tmp_path / "run")
    older, _, _ = save_one(run, 2)
    newest, _, _ = save_one(run, 4)
    _edit_json(newest / file, edit)
    if file != "manifest.json":
        rewrite_manifest(newest)  # the manifest agrees: only the values are wrong
    notes = []
    assert checkpoint.resolve(run, "latest", log=notes.append).path == older
    assert message in notes[0] and "using the newest complete checkpoint" in notes[0]
    with pytest.raises(DataError, match=re.escape(message)):
        checkpoint.verify(newest)


def test_trained_tensors_holding_nan_are_named_not_used(tmp_path, process_group):
    run = RunDir(tmp_path / "run")
    path, _, _ = save_one(run, 2)
    tensors = load_file(str(path / "trainable.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(path / "trainable.safetensors"))
    rewrite_manifest(path)
    with pytest.raises(DataError, match=re.escape(f"trainable.safetensors: tensor {name} holds NaN or infinite values")):
        checkpoint.load_trainable(path)


def test_pruning_never_touches_another_run_or_latest(tmp_path, process_group):
    run = RunDir(tmp_path / "run")
    foreign = [save_one(run, s, run_id="older-run")[0] for s in (50, 60)]  # higher steps, another run
    mine = [save_one(run, s, run_id="mine", keep=1)[0] for s in (1, 2, 3)]
    left = sorted(p.name for p in run.checkpoints.iterdir() if p.is_dir())
    assert left == sorted([mine[-1].name] + [p.name for p in foreign])
    assert (run.checkpoints / "latest").read_text().strip() == mine[-1].name
    assert (mine[-1] / "trainable.safetensors").is_file()


def test_a_resumed_optimizer_keeps_the_kernels_it_was_built_with(tmp_path):
    """torch's load_state_dict takes the saved groups' settings; a checkpoint from before the optimizer
    ran foreach kernels (foreach None) must not switch a resumed run back to the per-tensor loop."""
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    old = torch.optim.SGD(params, lr=0.1, momentum=0.9)  # what 45c9413's trainer built and saved
    for p in params:
        p.grad = torch.ones_like(p)
    old.step()
    save_state(old.state_dict(), tmp_path / "optimizer-rank0")
    resumed = build_optimizer(OptimConfig(lr=0.1, momentum=0.9), params)
    checkpoint.load_optimizer_state(resumed, load_state(tmp_path / "optimizer-rank0", like=resumed.state_dict()))
    assert resumed.param_groups[0]["foreach"] is True
    assert torch.equal(resumed.state[params[0]]["momentum_buffer"], old.state[params[0]]["momentum_buffer"])


def test_saving_a_step_again_keeps_the_old_copy_until_the_new_one_is_in_place(tmp_path, process_group, monkeypatch):
    """A stop right after a save (or a resume) saves the same step again. Killed between the two renames,
    the run must still resume from that step, never start afresh."""
    run = RunDir(tmp_path / "run")
    first, model, _ = save_one(run, 10, keep=1)
    real = os.replace

    def killed_before_the_new_copy_lands(src, dst):
        if Path(dst) == first:
            raise KeyboardInterrupt("SIGKILL")
        return real(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_before_the_new_copy_lands)
    with pytest.raises(KeyboardInterrupt):
        save_one(run, 10, keep=1)
    monkeypatch.setattr(checkpoint.os, "replace", real)
    ckpt = checkpoint.resolve(run, "latest", log=lambda msg: None)
    assert ckpt is not None and ckpt.path.name == first.name + checkpoint.ASIDE
    assert checkpoint.step_of(ckpt.path) == 10
    again = save_one(run, 10, keep=1)[0]  # a later save of the step completes, and leaves one copy
    assert sorted(p.name for p in run.checkpoints.iterdir() if p.is_dir()) == [first.name]
    assert checkpoint.resolve(run, "latest").path == again == first


def test_latest_naming_a_checkpoint_that_is_gone_is_an_error_not_a_fresh_start(tmp_path, process_group):
    run = RunDir(tmp_path / "run")
    only, _, _ = save_one(run, 3)
    shutil.rmtree(only)
    with pytest.raises(DataError, match=rf"names {only.name}, which is not there \(delete latest to start afresh\)"):
        checkpoint.resolve(run, "latest")


def test_zero_optimizer_shards_of_another_world_size_are_named_before_anything_starts(tmp_path):
    for r in range(2):
        (tmp_path / f"optimizer-rank{r}.json").write_text("{}")
    ckpt = checkpoint.Checkpoint(tmp_path, {"epoch": 1, "step_in_epoch": 0, "global_step": 4,
                                            "run": {"zero_stage": 1, "world_size": 2}})
    checkpoint.check_resumable(ckpt, {"zero_stage": 1, "world_size": 2, "model": {}})
    with pytest.raises(RunDirError, match=r"holds the ZeRO-1 optimizer shards of 2 rank\(s\), and this run has 1; resume with 2"):
        checkpoint.check_resumable(ckpt, {"zero_stage": 1, "world_size": 1, "model": {}})
