"""Build options shared by every source (image folder, LIFT lists, iNaturalist 2018, CIFAR-100-LT)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lift_dist.data.manifest import SPLIT_NAME_CHARS, is_valid_split_name
from lift_dist.errors import ConfigError

DEFAULT_SHARD_SIZE = 1000  # samples per shard: ~25 MB at 256 px, hundreds of shards for iNat
DEFAULT_RESIZE = 256
DEFAULT_QUALITY = 90


@dataclass
class BuildOptions:
    out: Path
    split: str
    resize: int | None = DEFAULT_RESIZE  # shorter side, never upscaled; None keeps the original bytes
    quality: int = DEFAULT_QUALITY  # JPEG quality when re-encoding
    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int = 1
    seed: int = 0
    skip_bad: bool = False
    train_manifest: Path | None = None  # directory holding train-classes.parquet (default: out)
    progress: bool | None = None  # tqdm bar; None = on (every 30 s when stderr is not a terminal), False = off

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.train_manifest is not None:
            self.train_manifest = Path(self.train_manifest)

    def validate(self) -> BuildOptions:
        if not is_valid_split_name(self.split):
            raise ConfigError(f"split name {self.split!r} must be non-empty and use only {SPLIT_NAME_CHARS}")
        if self.resize is not None and (not isinstance(self.resize, int) or self.resize < 1):
            raise ConfigError(f"resize must be a positive number of pixels (got {self.resize!r})")
        if not 1 <= int(self.quality) <= 100:
            raise ConfigError(f"JPEG quality must be 1..100 (got {self.quality})")
        if int(self.shard_size) < 1:
            raise ConfigError(f"shard size must be at least 1 sample (got {self.shard_size})")
        if int(self.workers) < 1:
            raise ConfigError(f"workers must be at least 1 (got {self.workers})")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"output {self.out} exists and is not a directory")
        return self

    @property
    def train_dir(self) -> Path:
        return self.train_manifest if self.train_manifest is not None else self.out
