"""Arguments of `lift-dist shards` (also `python shards/build.py`).

    shards inat2018 --root DIR --split train|val --out OUT [--level genus] [--label-scheme original]
    shards list --list Places_LT_train.txt --image-root DIR --class-names classnames.txt --split train --out OUT
    shards folder --root DIR/train --split train --out OUT
    shards cifar100 --archive cifar-100-python.tar.gz --imbalance 100 --split train --out OUT
    shards verify OUT [--split S] [--decode]

User mistakes print one line (no traceback) and exit 2; `verify` exits 1 when something differs.
"""

from __future__ import annotations

import argparse

from lift_dist.shards.options import DEFAULT_QUALITY, DEFAULT_RESIZE, DEFAULT_SHARD_SIZE

RUN = "lift_dist.shards.cli:run"
DESCRIPTION = "Build WebDataset shard sets (tars + Parquet manifests) for lift-dist; resumable; `verify` re-reads them."
EPILOG = __doc__


def _common(p: argparse.ArgumentParser, quality: int = DEFAULT_QUALITY) -> None:
    p.add_argument("--out", required=True, help="output directory (shards + manifests of every split)")
    p.add_argument("--split", required=True, help="split name: train, val, test, ... (letters, digits, _)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--resize", type=int, default=DEFAULT_RESIZE, metavar="PX",
                      help=f"re-encode with the shorter side resized down to PX (never up; default {DEFAULT_RESIZE})")
    size.add_argument("--no-resize", dest="resize", action="store_const", const=None,
                      help="keep the original bytes of upright RGB JPEGs (others are re-encoded at full size)")
    p.add_argument("--quality", type=int, default=quality, help=f"JPEG quality when re-encoding (default {quality})")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help=f"samples per shard (default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--workers", type=int, default=1, help="processes that decode/resize/encode/write (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards (default 0)")
    p.add_argument("--skip-bad", action="store_true", help="leave out bad items (listed in OUT/{split}-errors.parquet) instead of failing")
    p.add_argument("--train-manifest", metavar="DIR",
                   help="for val/test: directory holding train-classes.parquet (label map + counts; default: --out)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inat2018", help="the official iNaturalist 2018 release")
    p.add_argument("--root", required=True, help="release directory: train2018.json, val2018.json, categories.json, train_val2018/")
    p.add_argument("--annotations", help="annotation file (default: ROOT/{split}2018.json)")
    p.add_argument("--categories", help="taxonomy file (default: ROOT/categories.json)")
    p.add_argument("--level", default="species", choices=["species", "genus", "family", "order", "class", "phylum", "kingdom"])
    p.add_argument("--label-scheme", default="official", choices=["official", "original"],
                   help="official: alphabetical by scientific name at the level; original: category-id order")
    _common(p)

    p = sub.add_parser("list", help="a LIFT list file (ImageNet-LT, Places-LT, iNaturalist lists)")
    p.add_argument("--list", required=True, dest="list_file", help="lines '<relative path> <label>'")
    p.add_argument("--image-root", required=True, help="directory the list's paths are relative to")
    p.add_argument("--class-names", required=True, help="classnames.txt ('<folder-or-wnid> <name...>') or categories.json")
    _common(p)

    p = sub.add_parser("folder", help="an image-folder tree: ROOT/<class>/<image>, classes sorted")
    p.add_argument("--root", required=True)
    _common(p)

    p = sub.add_parser("cifar100", help="CIFAR-100(-LT) from cifar-100-python.tar.gz")
    p.add_argument("--archive", required=True)
    p.add_argument("--imbalance", type=float, default=100.0, help="train split imbalance ratio rho (100, 50, 10; default 100)")
    p.add_argument("--balanced", action="store_true", help="keep the full balanced train split")
    _common(p, quality=95)

    p = sub.add_parser("verify", help="re-read shards with webdataset and compare with the manifests")
    p.add_argument("out")
    p.add_argument("--split", action="append", help="only this split (repeatable; default: every split in OUT)")
    p.add_argument("--decode", action="store_true", help="also decode every image")
