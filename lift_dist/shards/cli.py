"""`lift-dist shards ...` (also `python shards/build.py ...`): build one split of a shard set, or verify
one. Arguments: lift_dist.commands.shards."""

from __future__ import annotations

import argparse
import sys

from lift_dist.errors import LiftError
from lift_dist.shards.builder import build
from lift_dist.shards.cifar100 import index_cifar100
from lift_dist.shards.folder import index_image_folder
from lift_dist.shards.inat2018 import index_inat2018
from lift_dist.shards.listfile import index_list
from lift_dist.shards.options import BuildOptions
from lift_dist.shards.verification import verify

PROG = "lift-dist shards"


def _options(a) -> BuildOptions:
    return BuildOptions(out=a.out, split=a.split, resize=a.resize, quality=a.quality, shard_size=a.shard_size,
                        workers=a.workers, seed=a.seed, skip_bad=a.skip_bad, train_manifest=a.train_manifest,
                        progress=a.progress)


def run(a: argparse.Namespace) -> int:
    try:
        return _run(a)
    except OSError as e:  # disk full, permissions, a vanished mount: the file and the reason, no traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        raise LiftError(f"{e.strerror or e}{where}; finished shards are kept, run the same command again to resume") from None
    except UnicodeDecodeError as e:
        raise LiftError(f"an input file is not UTF-8 text ({e})") from None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (finished shards are kept; run the same command again to resume)", file=sys.stderr)
        return 130


def _run(a: argparse.Namespace) -> int:
    if a.command == "verify":
        problems = verify(a.out, a.split, decode=a.decode)
        for p in problems:
            print(f"MISMATCH {p}")
        if problems:
            print(f"{PROG} verify: {len(problems)} problem(s) in {a.out}", file=sys.stderr)
            return 1
        print(f"{PROG} verify: {a.out} OK")
        return 0
    if a.command == "inat2018":
        src = lambda train: index_inat2018(a.root, a.split, annotations=a.annotations, categories=a.categories,  # noqa: E731
                                           level=a.level, scheme=a.label_scheme, train=train)
    elif a.command == "list":
        src = lambda train: index_list(a.list_file, a.image_root, a.class_names, train)  # noqa: E731
    elif a.command == "folder":
        src = lambda train: index_image_folder(a.root, train)  # noqa: E731
    else:
        src = lambda train: index_cifar100(a.archive, a.split, imbalance=None if a.balanced else a.imbalance, train=train)  # noqa: E731
    build(src, _options(a))
    return 0
