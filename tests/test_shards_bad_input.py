"""Shard builder on bad input: every kind of bad item is reported by name and reason, the build fails
(or skips them with skip_bad), and no half-written shard is ever left behind. Also image modes."""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import tarfile
from itertools import product
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from support.shards import CATEGORIES, needs_categories, read_split, run_cli

from lift_dist.errors import DataError
from lift_dist.shards import build_cifar100, build_from_list, build_image_folder, build_inat2018, verify
from lift_dist.shards.images import BadImage, encode_bytes
from lift_dist.shards.synthetic import tiny_jpegs, write_cifar100, write_inat2018
from lift_dist.shards.writer import sha256_file


def errors(out: Path, split: str) -> dict[str, str]:
    t = pq.read_table(out / f"{split}-errors.parquet").to_pydict()
    return dict(zip(t["item"], t["reason"]))


def assert_no_partial_files(out: Path) -> None:
    """Every shard on disk is complete (its record's checksum matches) and no temp file is left."""
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    for tar in out.glob("*.tar"):
        rec = json.loads((out / f"{tar.name}.record.json").read_text())
        assert rec["sha256"] == sha256_file(tar), tar.name


@pytest.fixture
def release(tmp_path) -> Path:
    if not CATEGORIES.is_file():
        pytest.skip(f"shared data absent: {CATEGORIES} not found")
    cats = json.loads(CATEGORIES.read_text())
    root = tmp_path / "inat"
    write_inat2018(root, cats, {10: 6, 20: 4, 30: 2}, {10: 1})
    return root


def edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


@needs_categories
def test_annotation_level_problems_are_reported_and_nothing_is_written(release, tmp_path):
    def corrupt(d):
        imgs, anns = d["images"], d["annotations"]
        anns[0]["category_id"] = 99999  # unknown category
        anns.append({"id": 1, "image_id": 424242, "category_id": 10})  # unknown image id
        imgs.append(dict(imgs[1], file_name="train_val2018/Animalia/10/copy.jpg"))  # duplicate image id
        imgs.append({"id": 7001, "file_name": "../outside.jpg"})  # escapes the root
        imgs.append({"id": 7002, "file_name": "/etc/hostname"})  # absolute
        anns += [{"id": 2, "image_id": 7001, "category_id": 10}, {"id": 3, "image_id": 7002, "category_id": 10}]
        imgs.append({"id": 7003, "file_name": "train_val2018/x/none.jpg"})  # no annotation

    edit_json(release / "train2018.json", corrupt)
    d = json.loads((release / "train2018.json").read_text())
    first, dup = d["images"][0], d["images"][1]
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"7 bad item\(s\) in the 'train' split .*--skip-bad") as e:
        build_inat2018(release, out, "train")
    assert "unknown category id 99999" in str(e.value)
    err = errors(out, "train")
    assert err[f"image {first['id']} ({first['file_name']})"].startswith("unknown category id 99999")
    assert err["annotations[12]"].startswith("unknown image id 424242")
    assert err[f"image {dup['id']} ({dup['file_name']})"].startswith("duplicate image id")
    assert err[f"image {dup['id']} (train_val2018/Animalia/10/copy.jpg)"].startswith("duplicate image id")
    assert "escapes the image root ('..')" in err["image 7001 (../outside.jpg)"]
    assert "absolute path" in err["image 7002 (/etc/hostname)"]
    assert err["image 7003 (train_val2018/x/none.jpg)"].startswith("no annotation")
    assert sorted(p.name for p in out.iterdir()) == ["train-errors.parquet"]  # no shard, no manifest

    s = build_inat2018(release, out, "train", skip_bad=True, shard_size=4)
    assert s["skipped"] == 7 and s["samples"] == 12 - 2  # the bad category, the duplicated id's original
    assert len(errors(out, "train")) == 7
    ids = {json.loads(x["json"])["image_id"] for x in read_split(out, "train")}
    assert first["id"] not in ids and dup["id"] not in ids and not ids & {7001, 7002, 7003}
    assert verify(out) == []


@needs_categories
def test_missing_and_corrupt_images_fail_the_build_without_half_written_shards(release, tmp_path):
    d = json.loads((release / "train2018.json").read_text())
    missing, broken = d["images"][2], d["images"][7]
    (release / missing["file_name"]).unlink()
    (release / broken["file_name"]).write_bytes(tiny_jpegs(1, 64)[0][:200])  # truncated JPEG
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        build_inat2018(release, out, "train", shard_size=3, workers=2)
    msg = str(e.value)
    assert msg.startswith("2 bad item(s) in the 'train' split") and "Finished shards are kept" in msg
    err = errors(out, "train")
    assert err[f"image {missing['id']} ({release / missing['file_name']})"] == "missing image file"
    assert err[f"image {broken['id']} ({release / broken['file_name']})"].startswith("unreadable or corrupt image")
    assert not (out / "train-shards.parquet").exists() and not (out / "train-classes.parquet").exists()
    assert_no_partial_files(out)

    s = build_inat2018(release, out, "train", shard_size=3, workers=2, skip_bad=True)
    assert s["skipped"] == 2 and s["samples"] == 10 and s["shards"] == 4
    # The shards holding the bad items were complete already (bad items left out, named in their records).
    assert s["reused_shards"] == 4 and s["written_shards"] == 0
    assert len(errors(out, "train")) == 2
    assert verify(out) == []
    assert_no_partial_files(out)

    # Without --skip-bad a later run tries the bad items again (they may have been fixed) and fails again.
    with pytest.raises(DataError, match="missing image file"):
        build_inat2018(release, out, "train", shard_size=3)


@needs_categories
def test_empty_split(release, tmp_path):
    edit_json(release / "val2018.json", lambda d: (d["images"].clear(), d["annotations"].clear()))
    out = tmp_path / "out"
    build_inat2018(release, out, "train")
    with pytest.raises(DataError, match="'val' split is empty"):
        build_inat2018(release, out, "val", skip_bad=True)
    assert list(errors(out, "val").values())[0].startswith("empty split")
    assert not (out / "val-shards.parquet").exists()


def list_dataset(tmp_path: Path, images: int) -> Path:
    """names.txt with classes a_cls, b_cls and `images` JPEGs under img/a/; returns img/."""
    (tmp_path / "names.txt").write_text("a_cls a_cls\nb_cls b_cls\n")
    img = tmp_path / "img"
    (img / "a").mkdir(parents=True)
    for i in range(images):
        (img / "a" / f"{i}.jpg").write_bytes(tiny_jpegs(1, 8)[0])
    return img


def test_list_file_problems(tmp_path):
    img = list_dataset(tmp_path, 3)
    (tmp_path / "list.txt").write_text(
        "a/0.jpg 0\n"
        "a/1.jpg 1\n"
        "a/2.jpg 7\n"  # unknown category
        "a/0.jpg 0\n"  # duplicate
        "../../etc/passwd 0\n"  # escapes the root
        "/abs/x.jpg 1\n"  # absolute
        "just-a-path\n"  # malformed
        "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"5 bad item\(s\)"):
        build_from_list(tmp_path / "list.txt", img, tmp_path / "names.txt", out, "train")
    err = errors(out, "train")
    assert err["list.txt:3 a/2.jpg"].startswith("unknown category: label 7 is outside 0..1")
    assert err["list.txt:4 a/0.jpg"] == "duplicate image id: a/0.jpg is already listed on line 1"
    assert "escapes the image root" in err["list.txt:5 ../../etc/passwd"]
    assert "absolute path" in err["list.txt:6 /abs/x.jpg"]
    assert err["list.txt:7"].startswith("expected '<relative path> <integer label>'")
    s = build_from_list(tmp_path / "list.txt", img, tmp_path / "names.txt", out, "train", skip_bad=True)
    assert s["samples"] == 2 and s["skipped"] == 5


def test_list_file_labels_are_ascii_integers_and_a_non_utf8_file_is_named_with_its_line(tmp_path):
    img = list_dataset(tmp_path, 4)
    (tmp_path / "list.txt").write_text("a/0.jpg 0\na/1.jpg --1\na/2.jpg \u00b2\na/3.jpg \u0661\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"3 bad item\(s\)"):  # '²' and '١' pass str.isdigit(); '--1' passed lstrip('-')
        build_from_list(tmp_path / "list.txt", img, tmp_path / "names.txt", out, "train")
    err = errors(out, "train")
    assert all(err[f"list.txt:{n}"].startswith("expected '<relative path> <integer label>'") for n in (2, 3, 4))
    (tmp_path / "list.txt").write_bytes("a/0.jpg 0\na/caf\u00e9.jpg 1\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"list file {tmp_path / 'list.txt'} line 2 is not UTF-8 text \(byte 0xe9\)"):
        build_from_list(tmp_path / "list.txt", img, tmp_path / "names.txt", tmp_path / "out2", "train")


@needs_categories
@pytest.mark.parametrize("edit, message", [
    (lambda cats: cats[0].update(id="zero"), "category [0] ('{name}') has id 'zero'; ids must be integers"),
    (lambda cats: cats[0].update(id=0.7), "category [0] ('{name}') has id 0.7; ids must be integers"),
    (lambda cats: cats[0].update(name=None), "category [0] lacks a 'name' string"),
    (lambda cats: cats[1].update(id=cats[0]["id"]), "category ids are not unique"),
])
def test_category_records_are_checked_in_categories_json_and_in_the_annotations(release, tmp_path, edit, message):
    name = json.loads((release / "categories.json").read_text())[0]["name"]
    for source in ("categories.json", "train2018.json"):
        copy = tmp_path / source.split(".")[0]
        shutil.copytree(release, copy)
        if source == "train2018.json":  # the annotation file's own categories, used when there is no categories.json
            cats = json.loads((copy / "categories.json").read_text())
            (copy / "categories.json").unlink()
            edit_json(copy / "train2018.json", lambda d, cats=cats: d.update(categories=cats))
        edit_json(copy / source, lambda d: edit(d["categories"] if isinstance(d, dict) else d))
        with pytest.raises(DataError, match=re.escape(f"{copy / source}") + r".*" + re.escape(message.format(name=name))):
            build_inat2018(copy, tmp_path / f"out-{source}", "train")


def test_cli_reports_bad_items_in_one_line_and_skip_bad_succeeds(tmp_path):
    root = tmp_path / "img"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{i}.jpg").write_bytes(tiny_jpegs(3, 8)[i])
    (root / "dog" / "bad.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    proc = run_cli("folder", "--root", str(root), "--split", "train", "--out", str(out), "--workers", "2")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("shards/build.py")]
    assert len(lines) == 1 and "1 bad item(s)" in lines[0] and "bad.png" in lines[0] and "unreadable or corrupt" in lines[0]
    ok = run_cli("folder", "--root", str(root), "--split", "train", "--out", str(out), "--skip-bad", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    assert "[shards] train: 6 samples" in ok.stdout and "1 skipped" in ok.stdout
    # An output location that cannot be written: one line naming it, no traceback.
    (tmp_path / "a-file").write_text("")
    proc = run_cli("folder", "--root", str(root), "--split", "train", "--out", str(tmp_path / "a-file" / "out"), "--skip-bad")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: Not a directory ({tmp_path / 'a-file' / 'out'})" in proc.stderr


# ---- image modes, orientation, resizing ----------------------------------------------------------

def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def as_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_convert_to_rgb_and_exif_orientation_is_applied():
    gray = as_bytes(Image.new("L", (30, 20), 128), "JPEG")
    cmyk = as_bytes(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG")  # red in CMYK
    pal = Image.new("P", (30, 20), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    rgba = Image.new("RGBA", (30, 20), (0, 0, 255, 0))  # fully transparent blue: must become white
    deep = Image.fromarray(np.full((20, 30), 40000, np.uint16))
    trans = pal.copy()
    trans.info["transparency"] = 1
    cases = {
        "gray": (gray, (128, 128, 128)),
        "cmyk": (cmyk, (255, 0, 0)),
        "palette": (as_bytes(pal, "PNG"), (0, 255, 0)),
        "palette+transparency": (as_bytes(trans, "PNG", transparency=1), (255, 255, 255)),
        "rgba": (as_bytes(rgba, "PNG"), (255, 255, 255)),
        "la": (as_bytes(Image.new("LA", (30, 20), (50, 255)), "PNG"), (50, 50, 50)),
        "16-bit": (as_bytes(deep, "PNG"), (156, 156, 156)),
    }
    for name, (data, rgb) in cases.items():
        out = decoded(encode_bytes(data, 256, 95))
        assert out.format == "JPEG" and out.mode == "RGB" and out.size == (30, 20), name
        assert np.abs(np.asarray(out, np.int16)[10, 15] - rgb).max() <= 6, (name, np.asarray(out)[10, 15])

    # EXIF orientation 6 (rotate 90 clockwise to view): a 40x20 landscape file is shown as 20x40.
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    data = as_bytes(img, "JPEG", exif=exif.tobytes(), quality=95)
    for resize in (256, None):  # --no-resize must not keep bytes whose pixels need rotating
        out = decoded(encode_bytes(data, resize, 95))
        assert out.size == (20, 40)
        top, bottom = np.asarray(out, np.int16)[5, 10], np.asarray(out, np.int16)[35, 10]
        assert np.abs(top - (0, 0, 255)).max() < 20 and np.abs(bottom - (255, 0, 0)).max() < 20  # left half now on top


def test_resize_shorter_side_never_upscale_and_no_resize_keeps_bytes():
    from lift_dist.shards.synthetic import photo_jpegs

    big = photo_jpegs(1, 800, 600)[0]
    assert decoded(encode_bytes(big, 256, 90)).size == (341, 256)
    assert decoded(encode_bytes(photo_jpegs(1, 300, 900)[0], 256, 90)).size == (256, 768)
    small = tiny_jpegs(1, 40)[0]
    assert decoded(encode_bytes(small, 256, 90)).size == (40, 40)
    assert encode_bytes(big, None, 90) == big
    png = as_bytes(Image.new("RGB", (50, 40), (1, 2, 3)), "PNG")
    assert decoded(encode_bytes(png, None, 90)).format == "JPEG"
    # A JPEG kept as it is was still decoded whole: a truncated or corrupt one is refused either way.
    for broken in (big[: len(big) // 2], big[:3000] + bytes(len(big) - 3000)):
        for resize in (None, 256):
            with pytest.raises(BadImage, match="unreadable or corrupt image"):
                encode_bytes(broken, resize, 90)


def test_build_resize_matches_pils_bicubic_within_jpeg_noise():
    """The torch kernels of encode_image against the reference they replace (PIL resize + PIL encode)."""
    from lift_dist.shards.images import encode_image, resize_shorter
    from lift_dist.shards.synthetic import photo_jpegs

    def psnr(a, b) -> float:
        return 10 * np.log10(255**2 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))

    for w, h in ((800, 600), (333, 1000), (257, 256)):
        src = Image.open(io.BytesIO(photo_jpegs(1, w, h, seed=w)[0])).convert("RGB")
        exact = resize_shorter(src, 256)  # PIL's pixels, before any JPEG
        buf = io.BytesIO()
        exact.save(buf, "JPEG", quality=90)
        ours, before = decoded(encode_image(src, 256, 90)), decoded(buf.getvalue())
        assert ours.size == before.size == exact.size
        # As close to the exact pixels as the old output was, to a tenth of a dB.
        assert psnr(ours, exact) > psnr(before, exact) - 0.1, (w, h, psnr(ours, exact), psnr(before, exact))


def _pil_path(data: bytes, resize: int) -> bytes:
    """What encode_bytes did before libjpeg-turbo decoded straight to an array: PIL's draft decode."""
    from PIL import ImageOps

    from lift_dist.shards.images import _load, encode_image, to_rgb

    return encode_image(to_rgb(ImageOps.exif_transpose(_load(Image.open(io.BytesIO(data)), resize))), resize, 90)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_libjpeg_turbo_decoding_gives_pils_pixels_at_every_exif_orientation(orientation):
    """The fast path (`_turbo_encode`) against PIL's draft + exif_transpose: same size, same pixels
    (both are libjpeg-turbo at the same DCT scale), for each of the 8 orientations."""
    from lift_dist.shards.images import _turbo_encode
    from lift_dist.shards.synthetic import photo_jpegs

    exif = Image.Exif()
    exif[0x0112] = orientation
    photo = Image.open(io.BytesIO(photo_jpegs(1, 800, 500, seed=orientation)[0]))
    data = as_bytes(photo, "JPEG", exif=exif.tobytes(), quality=92)
    assert _turbo_encode(data, Image.open(io.BytesIO(data)), orientation, 256, 90) is not None  # the path under test
    ours, theirs = decoded(encode_bytes(data, 256, 90)), decoded(_pil_path(data, 256))
    assert ours.size == theirs.size == ((256, 410) if orientation >= 5 else (410, 256))
    assert np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)).max() <= 2


def test_libjpeg_turbo_decodes_at_pils_draft_scale_and_leaves_what_it_doubts_to_pil():
    from lift_dist.data.jpeg import decode_rgb_draft
    from lift_dist.shards.images import _turbo_encode
    from lift_dist.shards.synthetic import photo_jpegs

    # libjpeg-turbo, asked for the size PIL's draft picks, decodes at that DCT scale: PIL's draft pixels exactly
    # (left to itself it would pick 3/8 for 700 px, 7/8 for 300 x 900).
    for (w, h), requested in product(((800, 600), (700, 700), (1000, 1000), (300, 900), (2049, 1537), (511, 4000), (257, 256)),
                                     ((256, 256), (341, 256), (100, 300))):
        data = photo_jpegs(1, w, h)[0]
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", requested)
        ours = decode_rgb_draft(data, Image.open(io.BytesIO(data)), requested)
        assert ours.shape[1::-1] == im.size and np.array_equal(ours, np.asarray(im.convert("RGB"))), (w, h, requested)
    # Stray bytes before the end marker: libjpeg-turbo's strict mode refuses the file, PIL builds it.
    photo = photo_jpegs(1, 800, 600)[0]
    stray = photo[:-2] + b"\x00" * 7 + photo[-2:]
    assert _turbo_encode(stray, Image.open(io.BytesIO(stray)), 1, 256, 90) is None
    assert decoded(encode_bytes(stray, 256, 90)).size == (341, 256)
    # Other modes, small images and unknown orientations are PIL's too.
    gray = as_bytes(Image.open(io.BytesIO(photo)).convert("L"), "JPEG")
    small = photo_jpegs(1, 64, 80)[0]
    for data, orientation in ((gray, 1), (small, 1), (photo, 9)):
        assert _turbo_encode(data, Image.open(io.BytesIO(data)), orientation, 256, 90) is None


def test_folder_test_split_with_an_unknown_class_folder(tmp_path):
    for split, classes in (("train", ("a", "b")), ("test", ("a", "zzz"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            (tmp_path / split / c / "0.jpg").write_bytes(tiny_jpegs(1, 8)[0])
    out = tmp_path / "out"
    build_image_folder(tmp_path / "train", out, "train")
    with pytest.raises(DataError, match="class folder 'zzz' is not one of the 2 training classes"):
        build_image_folder(tmp_path / "test", out, "test")
    s = build_image_folder(tmp_path / "test", out, "test", skip_bad=True)
    assert s["samples"] == 1 and [int(x["cls"]) for x in read_split(out, "test")] == [0]
    assert len(list(wds.WebDataset(str(out / "test-000000.tar"), shardshuffle=False, empty_check=False))) == 1


@needs_categories
@pytest.mark.parametrize("field, value", [("width", "wide"), ("height", -3), ("width", 12.5)])
def test_a_malformed_image_size_in_the_annotations_is_one_line(release, tmp_path, field, value):
    edit_json(release / "train2018.json", lambda d: d["images"][2].update({field: value}))
    with pytest.raises(DataError, match=rf"train2018.json: images\[2\]\.{field} must be a whole number of pixels \(got {value!r}\)"):
        build_inat2018(release, tmp_path / "out", "train")
    p = run_cli("inat2018", "--root", str(release), "--split", "train", "--out", str(tmp_path / "out2"))
    assert p.returncode == 2 and f"images[2].{field} must be a whole number of pixels" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out2").exists()


def test_cifar_archive_too_small_for_the_imbalance_is_refused(tmp_path):
    """Asked for ratio 100 from an archive of 10 images per class, the builder used to give ratio 2 silently."""
    archive = write_cifar100(tmp_path / "cifar-100-python.tar.gz", train_per_class=10, test_per_class=2)
    with pytest.raises(DataError, match=r"imbalance ratio 100 takes 500 training images of class 0 \('class_00'\) but the "
                                        r"archive has 10: use the complete cifar-100-python.tar.gz \(500 per class\), or --balanced"):
        build_cifar100(archive, tmp_path / "out", "train", imbalance=100)
    assert build_cifar100(archive, tmp_path / "out", "train", imbalance=None, shard_size=500)["samples"] == 1000


def _rewrite_cifar_member(archive: Path, member: str, edit) -> None:
    """The archive again with one pickle changed by `edit` (what a damaged or foreign archive holds)."""
    with tarfile.open(archive) as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    name = next(n for n in members if n.endswith(f"/{member}"))
    members[name] = pickle.dumps(edit(pickle.loads(members[name], encoding="bytes")), protocol=2)
    with tarfile.open(archive, "w:gz") as t:
        for n, data in members.items():
            info = tarfile.TarInfo(n)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("member, edit, message", [
    ("train", lambda d: list(d), "its 'train' pickle is a list, not the CIFAR dict"),
    ("meta", lambda d: 5, "its 'meta' pickle is a int, not the CIFAR dict"),
    ("train", lambda d: d | {b"fine_labels": [0.5] * len(d[b"fine_labels"])}, "'train' fine_labels must be a list of integers"),
    ("train", lambda d: d | {b"fine_labels": [None] * len(d[b"fine_labels"])}, "'train' fine_labels must be a list of integers"),
    ("train", lambda d: d | {b"data": d[b"data"].astype(np.int64) + 200}, "'train' data must be pixels 0..255 (uint8)"),
    ("meta", lambda d: d | {b"fine_label_names": [1, 2]}, "'fine_label_names' must be a list of names"),
])
def test_a_cifar_archive_of_the_wrong_structure_is_named_not_converted(tmp_path, member, edit, message):
    archive = write_cifar100(tmp_path / "cifar-100-python.tar.gz", train_per_class=2, test_per_class=1)
    _rewrite_cifar_member(archive, member, edit)
    with pytest.raises(DataError, match=re.escape(f"{archive}: {message}")):
        build_cifar100(archive, tmp_path / "out", "train", imbalance=None)
