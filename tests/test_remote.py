"""Shards streamed from a real HTTP server on 127.0.0.1: the same training as from the directory, cut
connections retried, a missing shard named by its URL, an optional local shard cache."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from support.http_server import ShardServer
from support.runs import TINY, last_line, latest_checkpoint, latest_weights, run_cli, run_torchrun

from lift_dist.config import load_config
from lift_dist.data.manifest import read_manifest
from lift_dist.errors import ConfigError, DataError
from lift_dist.sweep.holdout import make_holdout

TRAIN = [*TINY, "--epochs", "2", "--batch-size", "16", "--set", "data.tte=false", "--set", "deterministic=true"]


@pytest.mark.slow
def test_two_rank_training_from_http_equals_the_directory_and_survives_a_cut_connection(demo_shards, tmp_path):
    run_torchrun(2, "--shards", str(demo_shards), "--out", str(tmp_path / "local"), *TRAIN)
    with ShardServer(demo_shards, drops={"train-000002.tar": 1, "train-000004.tar": 1}) as srv:
        run_torchrun(2, "--shards", srv.url, "--out", str(tmp_path / "http"), *TRAIN)
        requests = dict(srv.requests)
        # Stopped mid-epoch and resumed from the URL: the same run again.
        run_torchrun(2, "--shards", srv.url, "--out", str(tmp_path / "resumed"), *TRAIN, "--set", "max_steps=9")
        state = json.loads((latest_checkpoint(tmp_path / "resumed") / "state.json").read_text())
        assert state["epoch"] == 0 and state["step_in_epoch"] > 0
        run_torchrun(2, "--shards", srv.url, "--out", str(tmp_path / "resumed"), *TRAIN, "--resume", "latest")
    a, b, c = (latest_weights(tmp_path / r) for r in ("local", "http", "resumed"))
    assert a.keys() == b.keys() == c.keys() and all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("local", "http"))
    assert ma["overall"] == mb["overall"] and ma["eval_samples"] == mb["eval_samples"] == 60
    # Each shard read once per epoch; the two cut ones once more (the retry), the manifests at start-up.
    assert requests["train-000002.tar"] == requests["train-000004.tar"] == 3 and requests["train-000000.tar"] == 2
    assert requests["train-shards.parquet"] >= 1 and requests["test-classes.parquet"] >= 1
    assert load_config(config_file=str(tmp_path / "http" / "config.yaml")).data.shards == srv.url  # a URL stays a URL


@pytest.mark.slow
def test_a_missing_shard_is_named_by_its_url(demo_shards, tmp_path):
    with ShardServer(demo_shards, missing={"train-000003.tar"}) as srv:
        p = run_cli("train", "--shards", srv.url, "--out", str(tmp_path / "run"), *TRAIN, "--set", "data.shard_retries=1")
    line = last_line(p.stderr)
    assert p.returncode == 2, p.stderr[-2000:]
    # curl's exit status 22 (HTTP >= 400), or when the tar reader saw the empty stream first, the status asked again
    assert f"shard {srv.url}train-000003.tar cannot be read after 1 retries (" in line, line
    assert re.search(r"\((curl exit 22|HTTP 404): the server answered with an HTTP error", line), line


@pytest.mark.slow
def test_the_shard_cache_reads_each_remote_shard_once(demo_shards, tmp_path):
    with ShardServer(demo_shards) as srv:
        p = run_cli("train", "--shards", srv.url, "--out", str(tmp_path / "run"), *TRAIN, "--set", "data.workers=1",
                    "--set", f"data.shard_cache={tmp_path / 'cache'}")
        requests = dict(srv.requests)
    assert p.returncode == 0, p.stderr[-2000:]
    shards = [k for k in requests if k.endswith(".tar")]
    assert len(shards) == 8 and all(requests[k] == 1 for k in shards)  # 2 epochs + evaluation, one download each
    assert len(list((tmp_path / "cache").iterdir())) == 8


def test_manifests_from_a_url_and_errors_naming_it(demo_shards):
    with ShardServer(demo_shards) as srv:
        m = read_manifest(srv.url, "train")
        assert m.remote and m.num_samples == 201 and m.shard_files[0] == f"{srv.url}train-000000.tar"
        with pytest.raises(DataError, match=rf"cannot read {srv.url}val-classes.parquet \((curl exit 22|HTTP 404)"):
            read_manifest(srv.url, "val", retries=0)
    with pytest.raises(ConfigError, match=r"s3:// is read through a command of yours; set data.shard_pipe"):
        read_manifest("s3://bucket/shards/", "train", retries=0)
    m = read_manifest(f"file://{demo_shards}", "train")  # file:// is the directory
    assert not m.remote and m.num_samples == 201


def test_a_remote_manifest_naming_files_outside_the_copy_is_refused_before_anything_is_written(demo_shards, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(demo_shards, served)
    table = pq.read_table(served / "train-shards.parquet").to_pydict()
    table["path"][0] = "../../escaped.txt"
    pq.write_table(pa.table(table), served / "train-shards.parquet")
    (tmp_path / "escaped.txt").write_text("the user's own file")
    with ShardServer(served) as srv, pytest.raises(DataError, match=r"train-shards.parquet: row 0 of column 'path' is "
                                                                    r"'\.\./\.\./escaped.txt'; it must be a relative path"):
        make_holdout(srv.url, tmp_path / "sweep" / "data", "train", 2, 0, retries=0)
    assert (tmp_path / "escaped.txt").read_text() == "the user's own file"


@pytest.mark.parametrize("file, column, values, message", [
    ("train-shards.parquet", "num_samples", "null", "row 1 of column 'num_samples' is None; it must be an integer >= 0"),
    ("train-shards.parquet", "path", "absolute", "row 0 of column 'path' is '/etc/hostname'; it must be a relative path"),
    ("train-shards.parquet", "path", "twice", "shard 'train-000000.tar' is listed more than once"),
    ("train-classes.parquet", "count", "negative", "row 0 of column 'count' is -3; it must be an integer >= 0"),
    ("train-classes.parquet", "label", "text", "row 0 of column 'label' is '0'; it must be an integer >= 0"),
])
def test_a_manifest_value_of_the_wrong_type_is_named_with_its_row(demo_shards, tmp_path, file, column, values, message):
    shards = tmp_path / "shards"
    shutil.copytree(demo_shards, shards)
    table = pq.read_table(shards / file).to_pydict()
    n = len(table[column])
    table[column] = {"null": pa.array([2] + [None] * (n - 1), pa.int64()), "absolute": ["/etc/hostname"] + table[column][1:],
                     "twice": [table[column][0]] * n, "negative": [-3] + table[column][1:],
                     "text": [str(v) for v in table[column]]}[values]
    pq.write_table(pa.table(table), shards / file)
    with pytest.raises(DataError, match=re.escape(f"{shards / file}: {message}")):
        read_manifest(shards, "train")


def test_pipe_urls_for_object_storage(demo_shards, tmp_path):
    """s3:// gs:// ... go through the user's command as webdataset pipe: URLs (here `cat` stands in for
    `aws s3 cp {url} -`)."""
    fake = f"s3://bucket{demo_shards}/"
    m = read_manifest(fake, "train", pipe="cat $(echo {url} | sed s,s3://bucket,,)", retries=0)
    assert m.num_samples == 201 and m.shard_files[0].startswith("pipe:cat ")
    from lift_dist.data.pipeline import shard_samples

    assert sum(1 for _ in shard_samples(m.shard_files[0])) == m.shard_samples[0]
    with pytest.raises(ConfigError, match=r"data.shard_pipe='aws s3 cp -' is not valid: the command needs a '\{url\}'"):
        load_config(None, None, ["data.shard_pipe=aws s3 cp -"])
