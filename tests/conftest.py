import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# No network here: fail fast instead of retrying downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
            f"--master-port={free_port()}", "-m", "lift_dist.train", *args]


def run_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_torchrun(nproc: int, *args: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(torchrun_cmd(nproc, *args), capture_output=True, text=True, env=run_env(), timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """A small long-tailed synthetic shard set: 10 classes (60 … 3 images), 6 + 2 shards."""
    from lift_dist.shards import build_image_folder
    from lift_dist.synthetic import long_tail_counts, write_image_folder

    root = tmp_path_factory.mktemp("demo")
    counts = long_tail_counts(10, 60, 20)
    write_image_folder(root / "img" / "train", counts, size=48, seed=0)
    write_image_folder(root / "img" / "test", [6] * 10, size=48, seed=1)
    out = root / "shards"
    build_image_folder(root / "img" / "train", out, "train", shard_size=(sum(counts) + 5) // 6, seed=0)
    build_image_folder(root / "img" / "test", out, "test", train_counts_from=out, shard_size=30, seed=0)
    return out


@pytest.fixture(scope="session")
def trained_run(demo_shards, tmp_path_factory):
    """One short 2-rank training run (tiny + AdaptFormer, TTE) on the demo shards."""
    run = tmp_path_factory.mktemp("trained") / "run"
    run_torchrun(2, "--shards", str(demo_shards), "--out", str(run), "--epochs", "2", "--model", "tiny", "--device", "cpu",
                 "--workers", "1", "--batch-size", "16", "--set", "model.pretrained=null", "--set", "data.tte_expand=8",
                 "--set", "optim.lr=0.05", "--set", "eval_every_epochs=1")
    return run
