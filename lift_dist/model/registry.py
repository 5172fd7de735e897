"""Model architectures by name, read from open_clip's JSON model configs without importing open_clip
(an import costs seconds; settings are checked before anything starts).

`tiny` and any other JSON under lift_dist/model/configs/ are ours and are registered with open_clip
when a model is built (backbone.register_builtin_configs).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

OUR_CONFIGS = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class VisionGeometry:
    image_size: int
    patch_size: int
    layers: int
    width: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def _open_clip_config_dir() -> Path | None:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model_configs"


@functools.lru_cache(maxsize=1)
def _configs() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for d in (_open_clip_config_dir(), OUR_CONFIGS):
        if d is None or not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            try:
                cfg = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
                out[f.stem] = cfg
    return out


def canonical(name: str) -> str:
    return name.replace("/", "-")


def model_names() -> list[str]:
    return list(_configs())


def vit_names() -> list[str]:
    return [n for n, c in _configs().items() if _is_plain_vit(c)]


def _is_plain_vit(cfg: dict) -> bool:
    v = cfg.get("vision_cfg", {})
    return "timm_model_name" not in v and isinstance(v.get("layers"), int) and "patch_size" in v


def model_config(name: str) -> dict | None:
    return _configs().get(canonical(name))


def vision_geometry(name: str) -> VisionGeometry | None:
    """Image size, patch size, depth and width of a plain open_clip ViT; None for other towers."""
    cfg = model_config(name)
    if cfg is None or not _is_plain_vit(cfg):
        return None
    v = cfg["vision_cfg"]
    size = v.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return VisionGeometry(image_size=int(size), patch_size=int(v["patch_size"]), layers=int(v["layers"]),
                          width=int(v.get("width", 768)))
