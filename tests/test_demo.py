"""The README's main job: `lift-dist demo` end to end (shards, 2 gloo ranks, TTE, report)."""

import json
import re
import subprocess
import sys

import pytest
from support.runs import REPO, run_env


@pytest.mark.slow
def test_demo_learns_well_above_chance(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lift_dist", "demo", "--out", str(tmp_path), "--epochs", "6"],
                       capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    overall = float(re.search(r"overall\s+([\d.]+)%", p.stdout).group(1))
    assert overall > 40.0  # chance is 5% on 20 classes
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["with_tte"] and metrics["eval_samples"] == 400
    assert abs(100 * metrics["overall"] - overall) < 0.01
    for group in ("head", "medium", "tail"):
        assert metrics[group] is not None  # the generated data has all three groups
    assert (tmp_path / "report" / "index.html").is_file()
    assert (tmp_path / "shards" / "train-shards.parquet").is_file()
