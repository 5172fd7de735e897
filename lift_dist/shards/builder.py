"""Build one split of a shard set from a source index: plan, write shards (in worker processes),
resume, and write the manifests the trainer reads (lift_dist.data.manifest).

Order of events, so that a crash at any point leaves nothing that looks complete:
  1. index the source; bad items without skip_bad -> errors report, stop (nothing else touched)
  2. remove this split's manifests, temp leftovers and shards beyond the new plan
  3. write every shard not already finished (finished = record matches plan and checksum)
  4. write errors report, classes, summary, and last the shard list (its presence means complete)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset  # noqa: F401  imported before forking, so workers start warm
from tqdm import tqdm

import lift_dist
from lift_dist.data import manifest as mf
from lift_dist.errors import DataError, LiftError
from lift_dist.lifecycle import die_with_parent
from lift_dist.run_dir import fsync_dir
from lift_dist.shards.index import BadItem, SourceIndex, TrainClasses, load_train_classes
from lift_dist.shards.options import BuildOptions
from lift_dist.shards.writer import ShardTask, fingerprint, is_temp_of_split, write_atomic, write_shard

SHOW_BAD = 5  # bad items named in the error message; all of them are in the errors report


def _parquet_bytes(columns: dict) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue().to_pybytes()


def write_errors(out: Path, split: str, bad: list[BadItem]) -> Path:
    path = mf.errors_path(out, split)
    write_atomic(path, _parquet_bytes({"item": [str(b[0]) for b in bad], "reason": [str(b[1]) for b in bad]}))
    return path


def bad_message(split: str, bad: list, report: Path, skip_hint: bool = True) -> str:
    shown = "; ".join(f"{b[0]}: {b[1]}" for b in bad[:SHOW_BAD])
    more = f"; and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    hint = " Fix them, or pass --skip-bad (skip_bad=True) to leave them out." if skip_hint else ""
    return f"{len(bad)} bad item(s) in the '{split}' split (all listed in {report}): {shown}{more}.{hint}"


def _clean_split(out: Path, split: str, num_shards: int) -> None:
    for p in (mf.shards_path(out, split), mf.summary_path(out, split), mf.errors_path(out, split), mf.classes_path(out, split)):
        p.unlink(missing_ok=True)
    for p in out.iterdir():
        name = p.name
        if is_temp_of_split(name, split):
            p.unlink(missing_ok=True)  # leftover of a crashed run
            continue
        base = name[: -len(".record.json")] if name.endswith(".record.json") else name
        idx = mf.shard_index(split, base)
        if idx is not None and idx >= num_shards:
            p.unlink(missing_ok=True)  # from an earlier, larger plan


# ---- running shard tasks ----------------------------------------------------------------------

_progress_queue = None


def _init_worker(queue) -> None:
    global _progress_queue
    _progress_queue = queue
    torch.set_num_threads(1)  # one core per worker: the resize kernel would otherwise contend with the others
    die_with_parent()  # a killed build must not leave workers writing shards


@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_write(task: ShardTask) -> dict:
    return write_shard(task, progress=_progress_queue.put)


def _drain(queue, bar) -> None:
    while True:
        try:
            bar.update(queue.get_nowait())
        except Exception:  # queue.Empty
            return


def run_tasks(tasks: Iterable[ShardTask], workers: int, bar) -> Iterator[dict]:
    """Results of write_shard per task (any order). At most 2 tasks per worker are built ahead, so
    memory does not grow with the dataset."""
    if workers == 1:
        for t in tasks:
            with _one_thread():
                rec = write_shard(t, progress=bar.update)
            yield rec
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    queue = ctx.Queue()
    it = iter(tasks)
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(queue,))
    try:
        pending, exhausted = set(), False
        while True:
            while not exhausted and len(pending) < 2 * workers:
                t = next(it, None)
                if t is None:
                    exhausted = True
                else:
                    pending.add(ex.submit(_worker_write, t))
            if not pending:
                break
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            _drain(queue, bar)
            for f in done:
                yield f.result()
        _drain(queue, bar)
    except BrokenProcessPool:
        raise LiftError("a shard-writing worker process died (killed, or out of memory?); finished shards are "
                        "kept: run the same command again to resume") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# ---- the build --------------------------------------------------------------------------------

def _progress_bar(opts: BuildOptions, total: int):
    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: worker processes are forked after the bar exists

    # Not a terminal (Slurm / nohup logs): still report images/s, every 30 s instead of redrawing.
    tty = sys.stderr.isatty()
    return Bar(total=total, unit="img", desc=f"shards {opts.split}", disable=opts.progress is False, smoothing=0.05,
               mininterval=0.5 if tty else 30)


def _source_name(index: SourceIndex) -> str:
    d = index.description
    return str(next((d[k] for k in ("annotations", "list", "archive", "root") if d.get(k)), d.get("kind", "source")))


def imbalance_ratio(counts: np.ndarray) -> float:
    nonzero = counts[counts > 0]
    return float(nonzero.max() / nonzero.min()) if len(nonzero) else 0.0


def build(index_source: Callable[[TrainClasses | None], SourceIndex], opts: BuildOptions) -> dict:
    """Build split `opts.split` into `opts.out`; returns the summary (as written to {split}-summary.json)
    plus run statistics ('elapsed_s', 'written_shards', 'reused_shards', 'images_per_s')."""
    t0 = time.time()
    opts.validate()
    return _build(index_source, opts, t0)


@contextlib.contextmanager
def building(out: Path):
    """One build into a shard directory at a time: a second would delete the first's shards in progress,
    and its manifests would describe a mix. The lock is the kernel's (flock on the directory itself, so
    it leaves no file behind, and a killed build holds none)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{out} is being built into by another process; wait for it to finish, or build into "
                            "another --out") from None
        except OSError:  # a file system without flock: unguarded, as before
            pass
        yield
    finally:
        os.close(fd)


def _build(index_source: Callable[[TrainClasses | None], SourceIndex], opts: BuildOptions, t0: float) -> dict:
    out, split = opts.out, opts.split
    train = None if split == "train" else load_train_classes(opts.train_dir, split)
    index = index_source(train)
    bad: list = [tuple(b) for b in index.bad]
    _refuse_a_bad_index(index, opts, bad)
    with building(out):
        records, names = _write_shards(index, opts)
        shard_bad = [tuple(b) for name in names for b in records[name].get("bad", [])]
        bad += shard_bad
        if shard_bad and not opts.skip_bad:
            report = write_errors(out, split, bad)
            raise DataError(bad_message(split, bad, report) + " Finished shards are kept; a re-run writes only the rest.")
        summary, listed = _write_manifests(index, opts, train, records, names, bad)

    elapsed = time.time() - t0
    samples = summary["samples"]
    written = sum(1 for r in records.values() if r["status"] == "written")
    stats = {"elapsed_s": round(elapsed, 3), "written_shards": written, "reused_shards": len(records) - written,
             "images_per_s": round(samples / elapsed, 1) if elapsed > 0 else None}
    g = summary["groups"]
    print(f"[shards] {split}: {samples:,} samples in {len(listed)} shard(s), {summary['classes']} classes "
          f"(head/medium/tail {g['head']}/{g['medium']}/{g['tail']}, imbalance {summary['imbalance_ratio']:g}); "
          f"{written} written, {stats['reused_shards']} reused, {len(bad)} skipped; "
          f"{elapsed:.1f} s ({samples / max(elapsed, 1e-9):,.0f} img/s) -> {out}", flush=True)
    return {**summary, **stats}


def _refuse_a_bad_index(index: SourceIndex, opts: BuildOptions, bad: list) -> None:
    """Problems found while indexing (annotations, paths, an empty split) stop the build before any
    shard is written, unless --skip-bad and something is left."""
    if index.n == 0:
        bad.append((_source_name(index), f"empty split: no usable images ({len(index.bad)} other bad item(s))"))
    if bad and (not opts.skip_bad or index.n == 0):
        opts.out.mkdir(parents=True, exist_ok=True)
        report = write_errors(opts.out, opts.split, bad)
        if index.n == 0:
            raise DataError(f"the '{opts.split}' split is empty: no usable images in {_source_name(index)}"
                            f" ({len(index.bad)} bad item(s); see {report})")
        raise DataError(bad_message(opts.split, bad, report))


def _write_shards(index: SourceIndex, opts: BuildOptions) -> tuple[dict[str, dict], list[str]]:
    """Every shard written (or reused, when its fingerprint matches), by the workers: the records by
    shard name, and the names in order."""
    out, split = opts.out, opts.split
    out.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(index.n / opts.shard_size)
    _clean_split(out, split, num_shards)
    # Shuffle across shards (a seeded permutation) so that no shard holds a single class.
    order = np.random.default_rng(opts.seed).permutation(index.n)

    def tasks() -> Iterator[ShardTask]:
        for k in range(num_shards):
            items = [index.make_item(int(i)) for i in order[k * opts.shard_size : (k + 1) * opts.shard_size]]
            yield ShardTask(k, str(out), mf.shard_name(split, k), items, fingerprint(items, opts.resize, opts.quality),
                            opts.resize, opts.quality, opts.skip_bad)

    records: dict[str, dict] = {}
    with _progress_bar(opts, index.n) as bar:
        for rec in run_tasks(tasks(), opts.workers, bar):
            records[rec["shard"]] = rec
    return records, [mf.shard_name(split, k) for k in range(num_shards)]


def _write_manifests(index: SourceIndex, opts: BuildOptions, train: TrainClasses | None, records: dict[str, dict],
                     names: list[str], bad: list) -> tuple[dict, list[str]]:
    """The split's class table, summary and shard list (each written atomically, the shard list last:
    it is what makes the split readable); returns the summary and the listed shards."""
    out, split = opts.out, opts.split
    counts = np.zeros(len(index.classes), dtype=np.int64)
    for name in names:
        for label, c in records[name]["labels"].items():
            counts[int(label)] += c
    samples = int(counts.sum())
    if samples == 0:
        report = write_errors(out, split, bad)
        raise DataError(f"the '{split}' split is empty: every image was bad (see {report})")
    train_counts = counts if train is None else train.counts
    groups = [mf.group_of(int(c)) for c in train_counts]
    listed = [n for n in names if records[n]["num_samples"] > 0]

    if bad:
        write_errors(out, split, bad)
    classes = {"label": list(range(len(index.classes))), "name": list(index.classes.names),
               "count": train_counts.tolist(), "group": groups, "split_count": counts.tolist(), **index.classes.columns}
    write_atomic(mf.classes_path(out, split), _parquet_bytes(classes))
    summary = {
        "split": split,
        "samples": samples,
        "classes": len(index.classes),
        "shards": len(listed),
        "imbalance_ratio": round(imbalance_ratio(train_counts), 4),
        "train_samples": int(train_counts.sum()),
        "empty_train_classes": int((train_counts == 0).sum()),
        "groups": {g: groups.count(g) for g in mf.GROUPS},
        **index.summary_extra,
        "source": index.description,
        "skipped": len(bad),
        "seed": opts.seed,
        "shard_size": opts.shard_size,
        "resize": opts.resize,
        "quality": opts.quality,
        "tool": "lift_dist.shards",
        "tool_version": lift_dist.__version__,
        "format_version": 1,
    }
    write_atomic(mf.summary_path(out, split), (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    write_atomic(mf.shards_path(out, split), _parquet_bytes({
        "path": listed,
        "num_samples": [records[n]["num_samples"] for n in listed],
        "bytes": [records[n]["bytes"] for n in listed],
        "sha256": [records[n]["sha256"] for n in listed],
    }))
    fsync_dir(out)
    return summary, listed
