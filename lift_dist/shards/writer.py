"""Write one shard: encode its items, stream them through webdataset's TarWriter into a temporary file,
then rename it into place and write its record. Runs in the worker processes.

Determinism: TarWriter stamps entries with time.time() unless given `mtime`, so a fixed mtime, user,
group and mode (and JPEG encoding, which is deterministic) make equal inputs give byte-equal shards.

Atomicity: the tar is written to `.{name}.{pid}.tmp`, fsynced, then renamed; its record (sha256,
bytes, samples, labels, fingerprint of its inputs) is written the same way after it. A shard counts as
finished only when its record matches both the plan and the file's checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from lift_dist.data import manifest as mf
from lift_dist.shards.images import BadImage, encode_bytes, encode_rgb
from lift_dist.shards.index import Item

FORMAT_VERSION = 1
TAR_MTIME = 0
TAR_USER = TAR_GROUP = "lift"
TAR_MODE = 0o444
TEMP_SUFFIX = ".tmp"


def temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}{TEMP_SUFFIX}")


def is_temp_of_split(name: str, split: str) -> bool:
    return name.startswith(f".{split}-") and name.endswith(TEMP_SUFFIX)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _HashingFile:
    """File wrapper that hashes and counts what TarWriter streams through it (no second read)."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


@dataclass
class ShardTask:
    index: int
    out: str
    name: str
    items: list[Item]
    fingerprint: str  # hash of the items + encoding options: a record from other inputs is stale
    resize: int | None
    quality: int
    skip_bad: bool = False  # a shard that skipped bad items is kept only when skipping is allowed


def fingerprint(items: list[Item], resize: int | None, quality: int) -> str:
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, resize, quality]).encode())
    for it in items:
        if it.kind == "rgb":
            w, hgt, data = it.payload
            payload = f"{w}x{hgt}:{hashlib.sha1(data).hexdigest()}"
        else:
            payload = str(it.payload)
        h.update(json.dumps([it.key, it.kind, payload, it.label]).encode())
        h.update(it.meta)
    return h.hexdigest()


def read_record(out: Path, name: str) -> dict | None:
    try:
        return json.loads(mf.record_path(out, name).read_text())
    except (OSError, ValueError):
        return None


def finished_record(task: ShardTask) -> dict | None:
    """The shard's record when the shard on disk is complete and from the same inputs, else None."""
    out = Path(task.out)
    rec = read_record(out, task.name)
    if not rec or rec.get("fingerprint") != task.fingerprint or rec.get("format") != FORMAT_VERSION:
        return None
    if rec.get("skipped") and not task.skip_bad:
        return None  # try its bad items again: they may have been fixed since
    tar = out / task.name
    if rec.get("num_samples") == 0:
        return rec if not tar.exists() else None
    try:
        if tar.stat().st_size != rec.get("bytes") or sha256_file(tar) != rec.get("sha256"):
            return None
    except OSError:
        return None
    return rec


def read_payload(item: Item) -> bytes:
    """The image bytes of a "file" item (a path) or a "member" item ((tar path, offset, size) of a shard entry)."""
    path, offset, size = (item.payload, 0, -1) if item.kind == "file" else item.payload
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def encode_item(item: Item, resize: int | None, quality: int) -> bytes:
    if item.kind == "rgb":
        w, h, data = item.payload
        return encode_rgb(w, h, data, resize, quality)
    try:
        data = read_payload(item)
    except FileNotFoundError:
        raise BadImage("missing image file") from None
    except IsADirectoryError:
        raise BadImage("is a directory, not an image file") from None
    except OSError as e:
        raise BadImage(f"cannot be read ({e.strerror or e})") from None
    return encode_bytes(data, resize, quality)


def write_shard(task: ShardTask, progress=None) -> dict:
    """Write (or keep) one shard. Returns its record plus 'status' (reused | written | failed) and
    'bad' ([item, reason] pairs). A shard with bad items is still written; whether that is allowed
    is the caller's decision (without --skip-bad the build fails before any manifest is written)."""
    rec = finished_record(task)
    if rec is not None:
        if progress:
            progress(len(task.items))
        return dict(rec, status="reused", bad=rec.get("skipped", []))
    out = Path(task.out)
    final, record = out / task.name, mf.record_path(out, task.name)
    for stale in (record, final):  # record first: a tar without a record is never trusted
        stale.unlink(missing_ok=True)
    tmp = temp_name(final)
    bad, labels, n, pending = [], Counter(), 0, 0
    try:
        with open(tmp, "wb") as raw:
            hashed = _HashingFile(raw)
            with wds.TarWriter(hashed, encoder=False, mtime=TAR_MTIME, user=TAR_USER, group=TAR_GROUP, mode=TAR_MODE) as tw:
                for item in task.items:
                    pending += 1
                    if progress and pending >= 32:
                        progress(pending)
                        pending = 0
                    try:
                        jpg = encode_item(item, task.resize, task.quality)
                    except BadImage as e:
                        bad.append([item.where, str(e)])
                        continue
                    tw.write({"__key__": item.key, "jpg": jpg, "cls": str(item.label).encode("ascii"), "json": item.meta})
                    labels[item.label] += 1
                    n += 1
            raw.flush()
            os.fsync(raw.fileno())
        if n:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    if progress and pending:
        progress(pending)
    rec = {
        "format": FORMAT_VERSION,
        "shard": task.name,
        "fingerprint": task.fingerprint,
        "num_samples": n,
        "bytes": hashed.size if n else 0,
        "sha256": hashed.sha.hexdigest() if n else "",
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "skipped": bad,
    }
    write_atomic(record, json.dumps(rec, sort_keys=True).encode())
    return dict(rec, status="written", bad=bad)
