"""Shared inputs of the shard-builder tests: the real iNaturalist / Places-LT lists in ../shared/data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import webdataset as wds

from lift_dist.data.manifest import read_manifest
from support.runs import SHARED_DATA, run_in_process

CATEGORIES = SHARED_DATA / "inat2018" / "categories.json"
PLACES = SHARED_DATA / "places_lt"

needs_categories = pytest.mark.skipif(not CATEGORIES.is_file(), reason=f"shared data absent: {CATEGORIES} not found")
needs_places = pytest.mark.skipif(not (PLACES / "Places_LT_train.txt").is_file(),
                                  reason=f"shared data absent: {PLACES}/Places_LT_train.txt not found")


def read_split(out: Path, split: str) -> list[dict]:
    """Every sample of a split, read with stock webdataset from the files the manifest lists."""
    samples = []
    for f in read_manifest(out, split).shard_files:
        samples += list(wds.WebDataset(str(f), shardshuffle=False, empty_check=False))
    return samples


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python shards/build.py ...` run in this process (test_shards_resume runs the script itself)."""
    return run_in_process("shards", *args, prog="shards/build.py")
