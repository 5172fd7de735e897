"""Bad data met during training (decoded in DataLoader workers) ends the run with one line naming the
shard, the sample and the cause, also under torchrun, where it is the last thing torchrun prints."""

from __future__ import annotations

import pytest
from support.data import damaged_copy
from support.runs import TINY, last_line, run_cli, run_torchrun

pytestmark = pytest.mark.slow

TRAIN = [*TINY, "--epochs", "1", "--batch-size", "8", "--set", "data.tte=false"]


def corrupt_first_jpeg(entries):
    first = next(n for n, _ in entries if n.endswith(".jpg"))
    return [(n, b"\xff\xd8\xff\xe0 not really a jpeg" if n == first else d) for n, d in entries]


def label_out_of_range(entries):
    first = entries[0][0].split(".")[0]
    return [(n, b"99" if n == f"{first}.cls" else d) for n, d in entries]


def one_sample_missing(entries):
    first = entries[0][0].split(".")[0]
    return [(n, d) for n, d in entries if not n.startswith(first + ".")]


@pytest.mark.parametrize("damage, message", [
    (corrupt_first_jpeg, "image cannot be decoded ("),
    (label_out_of_range, "label 99 is outside 0..9 of the manifest"),
    (one_sample_missing, "samples but its manifest says"),
])
def test_a_worker_error_is_one_line_naming_shard_sample_and_cause(demo_shards, tmp_path, damage, message):
    tar = damaged_copy(demo_shards, tmp_path / "shards", "train", damage)
    p = run_cli("train", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), *TRAIN)
    line = last_line(p.stderr)
    assert p.returncode == 2, p.stderr[-3000:]
    assert line.startswith("lift-dist train: error: ") and str(tar) in line and message in line, p.stderr[-3000:]
    if damage is not one_sample_missing:
        assert "sample '" in line  # the key of the bad sample
    assert "Caught" not in p.stderr and "Traceback" not in p.stderr


def test_under_torchrun_the_users_line_comes_last(demo_shards, tmp_path):
    tar = damaged_copy(demo_shards, tmp_path / "shards", "train", corrupt_first_jpeg)
    p = run_torchrun(2, "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), *TRAIN, check=False)
    assert p.returncode != 0
    tail = "\n".join(p.stderr.strip().splitlines()[-8:])
    assert "traceback : lift-dist train: error: sample '" in tail and str(tar) in tail, p.stderr[-3000:]
    assert "image cannot be decoded" in tail and "To enable traceback" not in p.stderr
    # The healthy rank learns it at the same step and stops with its own line, not a broken connection.
    assert "error: rank 1 stopped on an error at epoch 1" in p.stderr and "[rank0]: Traceback" not in p.stderr
    assert "another rank's line names the cause" in p.stderr
