"""Shard builder at iNaturalist scale: parsing a 437,513-image annotation file keeps memory bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.runs import REPO
from support.shards import CATEGORIES

from lift_dist.shards.synthetic import write_inat_annotations

N_IMAGES = 437_513  # train2018.json

# Peak RSS from VmHWM: ru_maxrss would also count the parent's peak (Linux keeps it across fork + exec).
PARSE = """
import json, sys, time
def peak_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
from lift_dist.shards.inat2018 import index_inat2018
base = peak_kb()
t = time.time()
idx = index_inat2018(sys.argv[1], "train", annotations=sys.argv[2], categories=sys.argv[3] or None)
items = [idx.make_item(i) for i in range(0, idx.n, 997)]
print(json.dumps({"n": idx.n, "bad": len(idx.bad), "classes": len(idx.classes), "seconds": time.time() - t,
                  "base_kb": base, "peak_kb": peak_kb(),
                  "first": items[0].meta.decode()}))
"""


@pytest.mark.slow  # 437,513 annotations
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_parsing_437k_annotations_stays_far_below_1_gib(tmp_path):
    ann = tmp_path / "train2018.json"
    write_inat_annotations(ann, N_IMAGES, num_categories=8142)
    cats = str(CATEGORIES) if CATEGORIES.is_file() else ""
    r = subprocess.run([sys.executable, "-c", PARSE, str(tmp_path), str(ann), cats], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n"] == N_IMAGES and res["bad"] == 0 and res["classes"] == 8142
    assert json.loads(res["first"])["image_id"] == 0
    # What parsing adds to the process (its imports, torch among them through webdataset, come first):
    # ~100 MB in practice, where json.load alone peaks near 500 MB on this file; the budget is 1 GiB.
    assert res["peak_kb"] - res["base_kb"] < 300 * 1024 and res["peak_kb"] < 1024 * 1024, res
