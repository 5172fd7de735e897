import os

import pytest
from support.data import build_demo_shards
from support.runs import TINY, run_torchrun
from support.slurm_cluster import slurm_cluster  # noqa: F401  (fixture)

# No network here: fail fast instead of retrying downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """System tests are marked by what they need, so `-m "not slurm and not browser"` leaves them out."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """A small long-tailed synthetic shard set: 10 classes (60 … 3 images), 6 + 2 shards."""
    return build_demo_shards(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def trained_run(demo_shards, tmp_path_factory):
    """One short 2-rank training run (tiny + AdaptFormer, TTE, an evaluation per epoch), shared by the
    tests that read a finished run (predict, report, run-directory protection)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    run_torchrun(2, "--shards", str(demo_shards), "--out", str(run), "--epochs", "2", *TINY, "--batch-size", "16",
                 "--set", "optim.lr=0.05", "--set", "eval_every_epochs=1")
    return run
