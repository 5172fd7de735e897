"""Shard builder: real files in, shards read back with stock webdataset, manifests checked by value."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from support.runs import SHARED_DATA
from support.shards import CATEGORIES, PLACES, needs_categories, needs_places, read_split, run_cli

from lift_dist.data.manifest import read_manifest
from lift_dist.errors import ConfigError
from lift_dist.shards import build_cifar100, build_from_list, build_image_folder, build_inat2018, verify
from lift_dist.shards.cifar100 import index_cifar100, long_tail_counts, long_tail_indices
from lift_dist.shards.inat2018 import label_map, read_categories
from lift_dist.shards.synthetic import tiny_jpegs, write_cifar100, write_inat2018

SHARED = SHARED_DATA

# A few real categories from different kingdoms / phyla; counts give head, medium and tail classes.
INAT_TRAIN = {0: 3, 1: 2, 100: 25, 2000: 4, 4000: 105, 5000: 1, 7000: 12, 8141: 6}
INAT_VAL = {0: 1, 100: 2, 4000: 3, 8141: 1}


def classes_table(out: Path, split: str) -> dict:
    return pq.read_table(out / f"{split}-classes.parquet").to_pydict()


@pytest.fixture(scope="module")
def categories() -> list[dict]:
    if not CATEGORIES.is_file():
        pytest.skip(f"shared data absent: {CATEGORIES} not found")
    return read_categories(CATEGORIES)


@pytest.fixture(scope="module")
def inat_root(tmp_path_factory, categories) -> Path:
    root = tmp_path_factory.mktemp("inat") / "release"
    write_inat2018(root, categories, INAT_TRAIN, INAT_VAL)
    return root


# ---- iNaturalist 2018 -------------------------------------------------------------------------

@needs_categories
@pytest.mark.parametrize("scheme", ["official", "original"])
def test_inat_level_class_counts_on_the_real_taxonomy(categories, scheme):
    want = {"kingdom": 6, "phylum": 25, "class": 57, "order": 272, "family": 1118, "genus": 4401, "species": 8142}
    for level, n in want.items():
        labels, table = label_map(categories, level, scheme)
        assert len(table.names) == n, level
        assert sorted(set(labels.tolist())) == list(range(n))
    labels, table = label_map(categories, "species", scheme)
    if scheme == "official":  # alphabetical by scientific name
        assert table.names == sorted(c["name"] for c in categories)
        assert labels[0] == table.names.index("Hermodice carunculata")
    else:  # category-id order
        assert labels.tolist() == [c["id"] for c in categories]
        assert table.columns["category_id"] == list(range(8142))


@needs_categories
def test_inat_train_and_val_official_species(inat_root, categories, tmp_path):
    out = tmp_path / "shards"
    s = build_inat2018(inat_root, out, "train", shard_size=40, seed=3)
    names = sorted(c["name"] for c in categories)
    by_id = {c["id"]: c for c in categories}
    samples = read_split(out, "train")
    assert len(samples) == sum(INAT_TRAIN.values()) == s["samples"]
    got = Counter()
    for smp in samples:
        meta = json.loads(smp["json"])
        cat = by_id[meta["category_id"]]
        label = int(smp["cls"])
        assert label == names.index(cat["name"])
        assert meta["file_name"].startswith(f"train_val2018/{cat['supercategory']}/{cat['id']}/")
        assert meta["taxonomy"]["genus"] == cat["genus"] and meta["taxonomy"]["species"] == cat["name"]
        got[cat["id"]] += 1
    assert dict(got) == INAT_TRAIN
    t = classes_table(out, "train")
    assert len(t["label"]) == 8142 and t["name"] == names
    for cid, n in INAT_TRAIN.items():
        lab = names.index(by_id[cid]["name"])
        assert t["count"][lab] == n and t["category_id"][lab] == cid and t["family"][lab] == by_id[cid]["family"]
    assert Counter(t["group"][names.index(by_id[c]["name"])] for c in INAT_TRAIN) == {"head": 1, "medium": 1, "tail": 6}
    assert s["imbalance_ratio"] == 105.0 and s["label_scheme"] == "official" and s["level"] == "species"

    v = build_inat2018(inat_root, out, "val", shard_size=40)  # label map + counts from OUT/train-classes.parquet
    tv = classes_table(out, "val")
    assert tv["count"] == t["count"] and tv["group"] == t["group"]
    assert sum(tv["split_count"]) == v["samples"] == sum(INAT_VAL.values())
    assert Counter(by_id[json.loads(x["json"])["category_id"]]["name"] for x in read_split(out, "val")) == \
        {by_id[c]["name"]: n for c, n in INAT_VAL.items()}
    assert verify(out) == []


@needs_categories
def test_inat_original_scheme_and_genus_level(inat_root, categories, tmp_path):
    build_inat2018(inat_root, tmp_path / "orig", "train", label_scheme="original", shard_size=100)
    for smp in read_split(tmp_path / "orig", "train"):
        assert int(smp["cls"]) == json.loads(smp["json"])["category_id"]

    out = tmp_path / "genus"
    s = build_inat2018(inat_root, out, "train", level="genus", shard_size=100)
    genera = sorted({c["genus"] for c in categories})
    by_id = {c["id"]: c for c in categories}
    assert s["classes"] == 4401
    for smp in read_split(out, "train"):
        assert genera[int(smp["cls"])] == by_id[json.loads(smp["json"])["category_id"]]["genus"]
    t = classes_table(out, "train")
    assert t["name"] == genera and "genus" not in t and t["family"][genera.index(by_id[4000]["genus"])] == by_id[4000]["family"]
    assert sum(t["num_species"]) == 8142
    # A val split at another level than its train split is refused, naming the mismatch.
    with pytest.raises(ConfigError, match="first difference at label"):
        build_inat2018(inat_root, out, "val", level="family")


@needs_categories
def test_val_split_without_a_train_manifest_says_so(inat_root, tmp_path):
    with pytest.raises(ConfigError, match=r"train-classes\.parquet does not exist: build the train split"):
        build_inat2018(inat_root, tmp_path / "empty", "val")
    proc = run_cli("inat2018", "--root", str(inat_root), "--split", "val", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "build the train split" in proc.stderr


# ---- LIFT lists: Places-LT --------------------------------------------------------------------

@needs_places
@pytest.mark.slow  # 62,500 list entries
def test_places_lt_train_list_counts_and_groups(tmp_path):
    lines = (PLACES / "Places_LT_train.txt").read_text().split("\n")
    entries = [ln.rsplit(" ", 1) for ln in lines if ln.strip()]
    assert len(entries) == 62500
    variants = tiny_jpegs(16, 8)
    sources = [tmp_path / f"v{i}.jpg" for i in range(16)]
    for src, data in zip(sources, variants):
        src.write_bytes(data)
    root = tmp_path / "places"
    for d in {Path(p).parent for p, _ in entries}:
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, (p, _) in enumerate(entries):
        os.link(sources[i % 16], root / p)  # hard links: 62,500 real files at a fraction of the cost
    out = tmp_path / "shards"
    s = build_from_list(PLACES / "Places_LT_train.txt", root, PLACES / "classnames.txt", out, "train",
                        shard_size=2500, workers=2, resize=None)
    want = Counter(int(lab) for _, lab in entries)
    assert s["samples"] == 62500 and s["classes"] == 365 and s["shards"] == 25
    assert s["groups"] == {"head": 131, "medium": 163, "tail": 71}
    t = classes_table(out, "train")
    assert t["count"] == [want[c] for c in range(365)]
    assert t["name"][:3] == ["airfield", "airplane_cabin", "airport_terminal"]  # underscores kept
    assert Counter(t["group"]) == {"head": 131, "medium": 163, "tail": 71}
    assert s["imbalance_ratio"] == max(want.values()) / min(want.values())
    labels = Counter()
    for f in read_manifest(out, "train").shard_files:
        for smp in wds.WebDataset(str(f), shardshuffle=False, empty_check=False):
            labels[int(smp["cls"])] += 1
    assert labels == want
    # --no-resize kept the original (already RGB, upright) bytes.
    first = next(iter(wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False, empty_check=False)))
    assert first["jpg"] in variants


@needs_categories
def test_inat_list_with_categories_json_names(tmp_path, categories):
    lines = (SHARED / "inat2018" / "iNaturalist18_val.txt").read_text().splitlines()[:300]
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    variants = tiny_jpegs(4, 8)
    for i, ln in enumerate(lines):
        p = tmp_path / "img" / ln.rsplit(" ", 1)[0]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(variants[i % 4])
    s = build_from_list(tmp_path / "val.txt", tmp_path / "img", CATEGORIES, tmp_path / "out", "train", shard_size=100)
    assert s["samples"] == 300 and s["classes"] == 8142
    t = classes_table(tmp_path / "out", "train")
    for smp in read_split(tmp_path / "out", "train"):
        meta = json.loads(smp["json"])
        folder_id = int(meta["file_name"].split("/")[2])  # train_val2018/<supercategory>/<category id>/<hash>.jpg
        assert int(smp["cls"]) == folder_id and t["name"][folder_id] == categories[folder_id]["name"]
        assert t["genus"][folder_id] == categories[folder_id]["genus"]


def test_imagenet_style_class_names(tmp_path):
    (tmp_path / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    variants = tiny_jpegs(2, 8)
    rows = []
    for i, wnid in enumerate(["n01440764", "n01443537", "n01484850"] * 2):
        p = Path("train") / wnid / f"{wnid}_{i}.JPEG"
        (tmp_path / "img" / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "img" / p).write_bytes(variants[i % 2])
        rows.append(f"{p} {i % 3}")
    (tmp_path / "list.txt").write_text("\n".join(rows) + "\n")
    build_from_list(tmp_path / "list.txt", tmp_path / "img", tmp_path / "classnames.txt", tmp_path / "out", "train", shard_size=4)
    t = classes_table(tmp_path / "out", "train")
    assert t["name"] == ["tench", "goldfish", "great white shark"] and t["folder"][2] == "n01484850"
    assert t["count"] == [2, 2, 2]


# ---- image folder, determinism, shuffling -----------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from lift_dist.synthetic import write_image_folder

    root = tmp_path_factory.mktemp("folder")
    write_image_folder(root / "train", [40, 20, 10, 5], size=40, seed=0)
    write_image_folder(root / "test", [3, 3, 3, 3], size=40, seed=1)
    return root


def test_image_folder_labels_are_sorted_folders(folder, tmp_path):
    out = tmp_path / "o"
    build_image_folder(folder / "train", out, "train", shard_size=10)
    build_image_folder(folder / "test", out, "test", shard_size=10)
    names = sorted(p.name for p in (folder / "train").iterdir())
    for smp in read_split(out, "train") + read_split(out, "test"):
        assert names[int(smp["cls"])] == json.loads(smp["json"])["file_name"].split("/")[0]
    assert classes_table(out, "test")["count"] == [40, 20, 10, 5]
    assert classes_table(out, "test")["split_count"] == [3, 3, 3, 3]
    m = read_manifest(out, "train")
    assert m.num_samples == 75 and len(m.shard_files) == 8 and m.groups == ["medium", "medium", "tail", "tail"]


def test_same_seed_gives_byte_identical_shards(folder, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_image_folder(folder / "train", a, "train", shard_size=10, seed=5)
    build_image_folder(folder / "train", b, "train", shard_size=10, seed=5, workers=2)
    build_image_folder(folder / "train", c, "train", shard_size=10, seed=6)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train-000000.tar").read_bytes() != (c / "train-000000.tar").read_bytes()
    # Samples are shuffled across shards: no shard holds a single class, although classes were contiguous.
    for f in read_manifest(a, "train").shard_files:
        labels = {int(s["cls"]) for s in wds.WebDataset(str(f), shardshuffle=False, empty_check=False)}
        assert len(labels) > 1, f.name
    # Tar members carry fixed metadata (TarWriter stamps time.time() unless given mtime).
    import tarfile

    with tarfile.open(a / "train-000000.tar") as tar:
        assert {(m.mtime, m.uname, m.gname, m.mode) for m in tar.getmembers()} == {(0, "lift", "lift", 0o444)}


# ---- CIFAR-100-LT ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory) -> Path:
    # The standard format with 500 train images per class (as the real set) and 10 test images per class.
    return write_cifar100(tmp_path_factory.mktemp("cifar") / "cifar-100-python.tar.gz", test_per_class=10)


@pytest.fixture(scope="module")
def cifar_targets(cifar_archive) -> np.ndarray:
    import pickle
    import tarfile

    with tarfile.open(cifar_archive) as tar:
        return np.array(pickle.load(tar.extractfile("cifar-100-python/train"), encoding="bytes")[b"fine_labels"])


def lift_reference_indices(targets: np.ndarray, imbalance: float) -> np.ndarray:
    """LIFT's IMBALANCECIFAR100 selection, with the global RNG as LIFT uses it (state restored after)."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        keep = []
        for c in range(100):
            idx = np.where(targets == c)[0]
            np.random.shuffle(idx)
            keep.append(idx[: int(500 * (1 / imbalance) ** (c / 99))])
        return np.concatenate(keep)
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("rho,total", [(100, 10847), (50, 12608), (10, 19573)])
def test_cifar100_lt_counts_match_lift(cifar_targets, rho, total):
    keep = long_tail_indices(cifar_targets, rho)
    counts = np.bincount(cifar_targets[keep], minlength=100)
    assert counts.sum() == total == sum(long_tail_counts(rho))
    assert counts[0] == 500 and counts[99] == 500 // rho
    assert counts.tolist() == sorted(counts.tolist(), reverse=True)
    assert keep.tolist() == lift_reference_indices(cifar_targets, rho).tolist()


def test_cifar100_lt_shards(cifar_archive, cifar_targets, tmp_path):
    idx = index_cifar100(cifar_archive, "train", imbalance=100)
    assert [int(idx.make_item(k).key) for k in range(idx.n)] == lift_reference_indices(cifar_targets, 100).tolist()
    out = tmp_path / "c"
    s = build_cifar100(cifar_archive, out, "train", imbalance=100, shard_size=2000, workers=2)
    assert s["samples"] == 10847 and s["imbalance_ratio"] == 100.0 and s["shards"] == 6
    samples = read_split(out, "train")
    assert np.bincount([int(x["cls"]) for x in samples], minlength=100).tolist() == long_tail_counts(100)
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(samples[0]["jpg"]))
    assert img.size == (32, 32) and img.mode == "RGB"  # never upscaled
    t = build_cifar100(cifar_archive, out, "test", shard_size=500)
    assert t["samples"] == 1000 and classes_table(out, "test")["count"] == long_tail_counts(100)
    assert classes_table(out, "test")["split_count"] == [10] * 100
    assert verify(out) == []


# ---- verify -------------------------------------------------------------------------------------

def test_verify_cli_passes_then_names_what_differs(folder, tmp_path):
    out = tmp_path / "v"
    build_image_folder(folder / "train", out, "train", shard_size=20)
    ok = run_cli("verify", str(out))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK" in ok.stdout
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # inside the first member's data: same size, different checksum
    shard.chmod(0o644)
    shard.write_bytes(bytes(data))
    (out / "train-000009.tar").write_bytes(b"")
    bad = run_cli("verify", str(out))
    assert bad.returncode == 1
    assert "train-000001.tar: sha256 differs from the manifest" in bad.stdout
    assert "not in the manifest, e.g. train-000009.tar" in bad.stdout
    assert "train-000000.tar" not in bad.stdout
