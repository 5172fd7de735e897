"""The run directory: the one place that knows its layout, reads and writes its files, and locks it.

    RUN/config.yaml          the resolved RunConfig (paths absolute)
    RUN/log.txt              what rank 0 printed
    RUN/history.jsonl        one JSON line per finished epoch (loss, lr, speed, evaluation)
    RUN/classes.json         class names, training counts and head/medium/tail groups
    RUN/metrics.json         final metrics (written last: its presence means the run finished)
    RUN/per_class.parquet    per-class accuracy (and eval counts) per evaluation mode
    RUN/confusions.parquet   sparse (true, predicted) mistake counts per evaluation mode
    RUN/tensorboard/         TensorBoard event files
    RUN/checkpoints/         step-XXXXXXXX/ directories and `latest` (lift_dist.engine.checkpoint)
    RUN/comms-rank{r}.json   DeepSpeed's record of collectives (LIFT_DIST_COMMS_LOG=1)
    RUN/lock                 who trains in this directory now (host, pid, launch)
    RUN/launch-<id>.yaml     the resolved config a Slurm job's tasks train from, one per submission (lift-dist launch)

Every file is written to a temporary name and renamed, so a reader never sees half a file; every
file is data (YAML, JSON, Parquet, safetensors), never a pickle.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lift_dist.config import load_config, save_config
from lift_dist.errors import ConfigError, DataError, RunDirError

CONFIG, LOG, HISTORY, CLASSES, METRICS = "config.yaml", "log.txt", "history.jsonl", "classes.json", "metrics.json"
PER_CLASS, CONFUSIONS, TENSORBOARD = "per_class.parquet", "confusions.parquet", "tensorboard"
CHECKPOINTS, LOCK = "checkpoints", "lock"


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in `path` durable (file systems that cannot fsync a directory are left be)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_files(folder: Path) -> None:
    """Flush every file of `folder` (a checkpoint about to be renamed into place) and the folder itself."""
    for f in Path(folder).iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


RUN_RECORDS = (CONFIG, LOG, HISTORY, CLASSES, METRICS, PER_CLASS, CONFUSIONS, LOCK)
SHARD_FILES = ("-shards.parquet", "-classes.parquet", "-summary.json", ".tar")


def check_output_file(out: str | os.PathLike, flag: str, run: str | os.PathLike | None = None,
                      shards: str | os.PathLike | None = None, model: str | os.PathLike | None = None) -> Path:
    """An output file that replaces nothing it is made from (a run's records or checkpoints, a shard
    set's manifests and tars, the model file), in a folder that can be written: checked before any work."""
    out = Path(out).absolute()
    if out.is_dir():
        raise ConfigError(f"{flag} {out} is a directory; give the path of a file")
    where = out.resolve()
    if run is not None:
        r = Path(run).resolve()
        if where.is_relative_to(r / CHECKPOINTS) or where.is_relative_to(r / TENSORBOARD) or (
                where.parent == r and (where.name in RUN_RECORDS or where.name.startswith(("comms-rank", "launch-")))):
            raise ConfigError(f"{flag} {out} would replace part of the run {run}; write it outside its records and checkpoints")
    if shards is not None and where.is_relative_to(Path(shards).resolve()) and where.name.endswith(SHARD_FILES):
        raise ConfigError(f"{flag} {out} would replace a file of the shard set {shards}; write it elsewhere")
    if model is not None and where == Path(model).resolve():
        raise ConfigError(f"{flag} {out} is the model file it reads; write it elsewhere")
    folder = next(p for p in out.parents if p.exists())  # the nearest existing folder: missing ones are made
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out}: {folder} is not a folder this user can write to")
    return out


def write_atomic(path: Path, data: bytes | str) -> None:
    """`path` holds the old contents or the new, never a part: written aside, flushed to disk, renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{what} {path} is not readable JSON: {e}") from None


def _finite_or_none(v):
    return None if isinstance(v, float) and math.isnan(v) else v


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ---- paths (the only place that names these files) ----------------------------------------
    config = property(lambda self: self.path / CONFIG)
    log_file = property(lambda self: self.path / LOG)
    history_file = property(lambda self: self.path / HISTORY)
    classes_file = property(lambda self: self.path / CLASSES)
    metrics_file = property(lambda self: self.path / METRICS)
    per_class_file = property(lambda self: self.path / PER_CLASS)
    confusions_file = property(lambda self: self.path / CONFUSIONS)
    tensorboard_dir = property(lambda self: self.path / TENSORBOARD)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    lock_file = property(lambda self: self.path / LOCK)

    def comms_file(self, rank: int) -> Path:
        return self.path / f"comms-rank{rank}.json"

    def file(self, name: str) -> Path:
        """Files other tools keep beside a run (a sweep trial's train.log, its Slurm job record)."""
        return self.path / name

    @property
    def finished(self) -> bool:
        return self.metrics_file.is_file()

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    # ---- config --------------------------------------------------------------------------------
    def write_config(self, cfg) -> None:
        save_config(cfg, self.config)

    def launch_config(self, submission: str) -> Path:
        return self.path / f"launch-{submission}.yaml"

    def write_launch_config(self, cfg, submission: str) -> Path:
        """A file of this submission's own: a second launch while the first job still waits in the queue
        must not change what that job trains (requeues of a job read its file again)."""
        path = self.launch_config(submission)
        save_config(cfg, path)
        return path

    def read_config(self):
        if not self.config.is_file():
            raise DataError(f"{self.path} is not a lift-dist run directory (no {CONFIG})")
        return load_config(config_file=str(self.config))

    # ---- log, history, metrics, classes ----------------------------------------------------------
    def log(self, msg: str) -> None:
        with open(self.log_file, "a") as f:
            f.write(msg + "\n")

    def append_history(self, entry: dict) -> None:
        with open(self.history_file, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def read_history(self, strict: bool = False) -> list[dict]:
        """Epoch records, the later of two for one epoch winning (a resumed run may repeat one). A line
        cut short by a kill is skipped, unless `strict` (then it is an error naming the line)."""
        if not self.history_file.is_file():
            return []
        rows = {}
        for i, line in enumerate(self.history_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                h = json.loads(line)
            except json.JSONDecodeError as e:
                if strict:
                    raise DataError(f"{self.history_file} line {i} is not JSON: {e}") from None
                continue
            if not isinstance(h, dict) or type(h.get("epoch", 0)) is not int:  # valid JSON, not an epoch record
                if strict:
                    raise DataError(f"{self.history_file} line {i} is not an epoch record (an object with an integer 'epoch')")
                continue
            rows[h.get("epoch", len(rows) + 1)] = h
        return [rows[e] for e in sorted(rows)]

    def trim_history(self, epochs_done: int) -> None:
        """Keep the epochs a resumed run keeps (none on a fresh start)."""
        kept = [h for h in self.read_history() if h.get("epoch", 0) <= epochs_done]
        write_atomic(self.history_file, "".join(json.dumps(h) + "\n" for h in kept))

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics_file, metrics)

    def read_metrics(self) -> dict:
        if not self.path.is_dir():
            raise DataError(f"run directory {self.path} does not exist or is not a directory")
        if not self.finished:
            raise DataError(f"{self.path} is not a finished run directory: no {METRICS} (training not run or not finished?)")
        m = read_json(self.metrics_file, "metrics file")
        if not isinstance(m, dict):
            raise DataError(f"metrics file {self.metrics_file} does not hold a JSON object")
        return m

    def write_classes(self, names: list[str], train_counts, groups: list[str], groups_from: str | None = None) -> None:
        data = {"names": list(names), "train_counts": [int(c) for c in train_counts], "groups": list(groups)}
        if groups_from:
            data["groups_from"] = groups_from
        write_json(self.classes_file, data)

    def read_classes(self) -> dict:
        if not self.classes_file.is_file():
            raise DataError(f"{self.path} is not a finished lift-dist run directory (no {CLASSES})")
        return read_json(self.classes_file, "class table")

    # ---- per-class results ------------------------------------------------------------------------
    def write_per_class(self, results: dict, class_names, train_counts, groups) -> None:
        cols = {"label": list(range(len(class_names))), "name": list(class_names),
                "train_count": [int(c) for c in train_counts], "group": list(groups)}
        for mode, m in results.items():
            cols[f"accuracy_{mode}"] = [float(a) for a in m["per_class"]]
            cols[f"eval_count_{mode}"] = [int(c) for c in m["per_class_count"]]
        self._write_parquet(self.per_class_file, pa.table(cols))

    def write_confusions(self, results: dict) -> None:
        rows = [(mode, t, p, n) for mode, m in results.items() for (t, p), n in sorted(m["confusions"].items())]
        schema = pa.schema([("mode", pa.string()), ("true", pa.int64()), ("predicted", pa.int64()), ("count", pa.int64())])
        self._write_parquet(self.confusions_file, pa.table(
            {"mode": [r[0] for r in rows], "true": [r[1] for r in rows], "predicted": [r[2] for r in rows],
             "count": [r[3] for r in rows]}, schema=schema))

    def read_per_class(self, required: set[str]):
        return self._read_parquet(self.per_class_file, required)

    def read_confusions(self, required: set[str]):
        return self._read_parquet(self.confusions_file, required)

    @staticmethod
    def _write_parquet(path: Path, table) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, path)

    @staticmethod
    def _read_parquet(path: Path, required: set[str]):
        """A pandas DataFrame, or None when the file is absent."""
        if not path.is_file():
            return None
        try:
            df = pq.read_table(path).to_pandas()
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path} is not a readable parquet file: {e}") from None
        missing = required - set(df.columns)
        if missing:
            raise DataError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
        return df

    # ---- the lock -------------------------------------------------------------------------------
    def lock(self, launch_id: str) -> RunLock:
        return RunLock(self.lock_file, launch_id)


def summary_metrics(m: dict) -> dict:
    """The five headline numbers; an empty group (NaN) becomes None (null in JSON)."""
    keys = ("overall", "mean_class", "head", "medium", "tail")
    return {k: _finite_or_none(None if m.get(k) is None else float(m[k])) for k in keys}


# ---- locking --------------------------------------------------------------------------------------

def launch_id() -> str:
    """What the ranks of one training launch share (so a rank knows its own job's lock)."""
    env = os.environ
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun:{env['TORCHELASTIC_RUN_ID']}:{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '')}:{env.get('SLURM_RESTART_COUNT', '0')}"
    if env.get("MASTER_PORT") and env.get("WORLD_SIZE", "1") != "1":
        return f"env:{env.get('MASTER_ADDR', '')}:{env['MASTER_PORT']}"
    return f"pid:{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _slurm_job_running(job_id: str) -> bool | None:
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return False if "Invalid job id" in out.stderr else None
    return bool(out.stdout.strip())


class RunLock:
    """A run directory belongs to one training at a time. Rank 0 writes RUN/lock (host, pid, launch id);
    every rank checks it first. A lock whose process is gone (same host, dead pid; or a Slurm job that
    no longer runs, or this very job requeued) is stale and taken over."""

    def __init__(self, path: Path, launch: str):
        self.path, self.launch, self.held = Path(path), launch, False
        self.record: dict | None = None  # what this process wrote into the lock

    def holder(self) -> dict | None:
        """The lock's record; None when there is none or it cannot be read as one (being written, damaged)."""
        try:
            h = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return h if isinstance(h, dict) else None

    def stale_reason(self, h: dict) -> str | None:
        """Why the holder `h` no longer trains here, or None when it may still."""
        if h.get("host") == socket.gethostname():
            pid = h.get("pid")
            if type(pid) is not int or pid <= 0:  # os.kill(-1, 0) would "find" it alive for ever (and true is pid 1)
                return f"it names no process (pid {pid!r})"
            return None if _pid_alive(pid) else f"pid {pid} is gone"
        job = str(h["slurm_job"]) if h.get("slurm_job") else None
        if job and job == os.environ.get("SLURM_JOB_ID"):
            return f"Slurm job {job} was requeued"
        if job and _slurm_job_running(job) is False:
            return f"Slurm job {job} no longer runs"
        return None

    def check(self) -> None:
        """Refuse when another launch holds a live lock (every rank calls this before anything starts)."""
        self._stale_or_refuse(self.holder())

    def _stale_or_refuse(self, h: dict | None) -> str | None:
        """Refuses a live lock of another launch; else why it is stale (None: no lock, or this launch's)."""
        if h is None or h.get("launch") == self.launch:
            return None
        reason = self.stale_reason(h)  # asked once: on another host it is an squeue call
        if reason:
            return reason
        t = h.get("time")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else f"time {t!r}"
        raise RunDirError(
            f"run directory {self.path.parent} is in use by another training (pid {h.get('pid')} on {h.get('host')}, "
            f"since {since}); wait for it to end, or use another --out. If no training runs there, delete {self.path}")

    def acquire(self, attempts: int = 20) -> str | None:
        """Take the lock (rank 0); returns a note when a stale lock was taken over.

        The lock file is created exclusively (a hard link of a finished private file, atomic on local
        and NFS file systems), so of two launches that start at once exactly one gets it and the other
        is refused on its next look, instead of both writing the lock and training. A stale lock is
        removed only under a takeover mutex and only if it is still the file that was judged stale."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = None
        for _ in range(attempts):
            h = self.holder()
            stale = self._stale_or_refuse(h)  # a live lock of another launch: refused here
            if h is None and self.path.exists():  # being written (no hard links) or unreadable: look again
                time.sleep(0.05)
                continue
            if h is not None:
                if not self._remove_if_unchanged(h):
                    continue
                if stale:
                    note = f"took over the stale lock of {self.path.parent} ({stale})"
            if self._create():
                self.held = True
                return note
        raise RunDirError(f"could not take the lock {self.path}: it is unreadable or other launches keep changing it; "
                          f"start one training per run directory, and if none runs there, delete {self.path}")

    def _remove_if_unchanged(self, judged: dict) -> bool:
        """Delete the lock judged stale (or our own launch's) if it is still that file. Takers hold a
        mutex (an exclusive mkdir, broken after a minute), so no taker can remove a lock another has
        just created: fresh locks appear only where no file is."""
        mutex = self.path.with_name(f".{self.path.name}.takeover")
        try:
            os.mkdir(mutex)
        except FileExistsError:
            with contextlib.suppress(OSError):  # left by a taker that died
                if time.time() - mutex.stat().st_mtime > 60:
                    os.rmdir(mutex)
            time.sleep(0.02)
            return False
        try:
            if self.holder() != judged:
                return False
            self.path.unlink(missing_ok=True)
            return True
        finally:
            os.rmdir(mutex)

    def _create(self) -> bool:
        """Create the lock file unless it exists (then False)."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), "launch": self.launch,
                  "slurm_job": os.environ.get("SLURM_JOB_ID"), "time": time.time()}
        data = (json.dumps(record, indent=2) + "\n").encode()
        tmp = self.path.with_name(f".{self.path.name}.new.{socket.gethostname()}.{os.getpid()}")
        write_atomic(tmp, data)
        try:
            os.link(tmp, self.path)
            self.record = record
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            try:  # a file system without hard links: an exclusive create, written at once (readers wait for it)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self.record = record
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Delete the lock if it is still the one this process wrote (not one that replaced it)."""
        if self.held and self.holder() == self.record:
            self.path.unlink(missing_ok=True)
        self.held = False
