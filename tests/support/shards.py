"""Shared inputs of the shard-builder tests: the real iNaturalist / Places-LT lists in ../shared/data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from lift_dist.data.manifest import read_manifest
from support.runs import REPO, SHARED_DATA

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


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python shards/build.py ...`, the documented entry point."""
    return subprocess.run([sys.executable, "shards/build.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
