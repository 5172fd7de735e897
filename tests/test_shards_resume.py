"""Shard builder: resuming after a crash keeps finished shards (checked against their records) and
rewrites only what is missing, corrupt, stale or half-written; the result equals a clean build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.runs import REPO

from lift_dist.errors import DataError
from lift_dist.shards import build_image_folder, verify
from lift_dist.shards.synthetic import photo_jpegs


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """600 photo-like 400x300 JPEGs in 6 classes (40 distinct images, copied)."""
    root = tmp_path_factory.mktemp("photos") / "train"
    jpegs = photo_jpegs(40, 400, 300, seed=1)
    for i in range(600):
        d = root / f"class_{i % 6}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:04d}.jpg").write_bytes(jpegs[i % 40])
    return root


def test_resume_rewrites_only_deleted_and_corrupt_shards(photos, tmp_path):
    out, clean = tmp_path / "out", tmp_path / "clean"
    build_image_folder(photos, clean, "train", shard_size=60, resize=64)
    build_image_folder(photos, out, "train", shard_size=60, resize=64)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    (out / "train-000001.tar").unlink()
    corrupt = out / "train-000003.tar"
    data = bytearray(corrupt.read_bytes())
    data[700] ^= 0x55
    corrupt.chmod(0o644)
    corrupt.write_bytes(bytes(data))
    (out / ".train-000005.tar.4242.tmp").write_bytes(b"half a shard")  # a crashed writer's leftover
    (out / "train-shards.parquet").unlink()

    s = build_image_folder(photos, out, "train", shard_size=60, resize=64)
    assert (s["written_shards"], s["reused_shards"]) == (2, 8)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    assert sorted(n for n in before if before[n] != after[n]) == ["train-000001.tar", "train-000003.tar"]
    assert snapshot(out) == snapshot(clean)
    assert verify(out) == []


def test_changed_inputs_or_options_are_not_reused(photos, tmp_path):
    out = tmp_path / "out"
    build_image_folder(photos, out, "train", shard_size=60, resize=64)
    s = build_image_folder(photos, out, "train", shard_size=60, resize=64, quality=70)
    assert s["written_shards"] == 10 and s["reused_shards"] == 0
    s = build_image_folder(photos, out, "train", shard_size=250, resize=64, quality=70)
    assert s["shards"] == 3 and s["written_shards"] == 3
    assert sorted(p.name for p in out.glob("train-0*")) == [f"train-00000{i}.tar{r}" for i in range(3)
                                                          for r in ("", ".record.json")]
    assert verify(out) == []


def test_killed_build_resumes_to_the_same_shards(photos, tmp_path):
    out, clean = tmp_path / "out", tmp_path / "clean"
    cmd = [sys.executable, "shards/build.py", "folder", "--root", str(photos), "--split", "train",
           "--shard-size", "10", "--resize", "128", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen([*cmd, "--out", str(out)], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(out.glob("*.record.json"))) < 4 and proc.poll() is None:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the builder and its worker processes, mid-build
    finally:
        proc.wait(timeout=30)
    assert not (out / "train-shards.parquet").exists(), "the build finished before it could be killed"
    done = list(out.glob("*.record.json"))
    assert 4 <= len(done) < 60
    for rec in done:  # whatever carries a final name is complete
        tar = out / rec.name.replace(".record.json", "")
        assert tar.is_file()
    r = subprocess.run([*cmd, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "60 shard(s)" in r.stdout and "reused" in r.stdout
    reused = int(r.stdout.split(" written, ")[1].split(" reused")[0])
    assert reused >= len(done) - 2  # at most the records in flight when killed can be lost
    build_image_folder(photos, clean, "train", shard_size=10, resize=128, workers=2)
    assert snapshot(out) == snapshot(clean)
    v = subprocess.run([sys.executable, "shards/build.py", "verify", str(out)], cwd=REPO, capture_output=True, text=True)
    assert v.returncode == 0, v.stdout


def test_workers_stop_when_the_builder_is_killed(photos, tmp_path):
    """SIGKILL of the builder's main process alone (not its process group): its workers used to live on
    and keep writing shards."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "shards/build.py", "folder", "--root", str(photos), "--split", "train", "--out", str(out),
                             "--shard-size", "5", "--resize", "256", "--workers", "2", "--no-progress"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("*.record.json"))) < 2 and proc.poll() is None:
        time.sleep(0.01)
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
    assert workers and proc.poll() is None, "the build finished before it could be killed"
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{w}").exists() for w in workers), "shard workers outlived the builder"
    written = sorted(out.glob("*.record.json"))
    time.sleep(2)
    assert sorted(out.glob("*.record.json")) == written  # nothing is written any more


def test_a_second_build_of_a_split_in_progress_is_refused_and_touches_nothing(photos, tmp_path):
    out = tmp_path / "out"
    build_image_folder(photos, out, "train", shard_size=60, resize=64)
    before = snapshot(out)
    # A build in progress elsewhere: another process holds the split's lock while it runs.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataError, match=rf"{out} is being built into by another process; wait for it to finish"):
            build_image_folder(photos, out, "train", shard_size=30, resize=32)
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(out) == before
    assert verify(out) == []


HOLD_LOCK = """
import fcntl, os, sys, time
fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""
