"""Build WebDataset shard sets (the format lift_dist.data.manifest describes) from image datasets.

Sources: an image-folder tree, a LIFT list file (ImageNet-LT / Places-LT / iNaturalist lists), the
official iNaturalist 2018 release, and CIFAR-100 (long-tail subsampled). Each builder writes one split
and returns its summary; `verify` re-reads a shard set with stock webdataset. The CLI is
`python shards/build.py` (lift_dist.shards.cli).

The builders (lift_dist.shards.api) are loaded on first use: importing a light part of the package,
such as the options `lift-dist shards --help` shows, does not import torch and webdataset.
"""

from __future__ import annotations

__all__ = ["BuildOptions", "build", "build_cifar100", "build_from_list", "build_image_folder", "build_inat2018", "verify"]


def __getattr__(name: str):
    if name in __all__:
        from lift_dist.shards import api  # noqa: PLC0415  (loaded on first use, see above)

        globals().update({n: getattr(api, n) for n in __all__})
        return getattr(api, name)
    raise AttributeError(f"module 'lift_dist.shards' has no attribute '{name}'")
