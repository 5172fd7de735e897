"""Loading open_clip CLIP models by name, with weights from a tag or a local file.

`tiny` is a built-in, randomly initialised CLIP (ViT, patch 16, 64 px, real BPE tokenizer) for tests
and demos; it works wherever a model name does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from lift_dist.errors import ConfigError, LiftError

_CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False


def register_builtin_configs() -> None:
    """Add lift-dist's model configs (`tiny`) to open_clip's registry (once)."""
    global _registered
    if _registered:
        return
    import open_clip

    for path in sorted(_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(path)
    _registered = True


def available_models() -> list[str]:
    import open_clip

    register_builtin_configs()
    return list(open_clip.list_models())


def check_model_name(name: str) -> None:
    import open_clip

    register_builtin_configs()
    if open_clip.get_model_config(name.replace("/", "-")) is None:
        vit = [m for m in open_clip.list_models() if m.startswith("ViT") or m == "tiny"]
        raise ConfigError(f"unknown model '{name}'. Valid ViT names include: {', '.join(vit)}")


def _weights_help(name: str, tag: str) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    where = cfg.get("hf_hub") or cfg.get("url") or "the open_clip model zoo"
    return (
        f"Download the weights for {name} / '{tag}' from {where} on a machine with internet access "
        f"(e.g. `python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\"` "
        f"fills ~/.cache/huggingface), or save the file locally and pass its path as --pretrained "
        f"(use the '-quickgelu' model name, e.g. {name}-quickgelu, for OpenAI weights loaded from a file)."
    )


class _quiet_random_init_warning:
    """open_clip warns 'No pretrained weights loaded' on random init, which is intended for `tiny`."""

    def __enter__(self):
        self.logger = logging.getLogger()
        self.level = self.logger.level
        self.logger.setLevel(max(self.level, logging.ERROR))

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def tag_kwargs(name: str, pretrained: str) -> dict:
    """create_model options a pretrained tag needs. OpenAI's weights were trained with QuickGELU; open_clip
    (3.x) only warns when a plain config such as ViT-B-16 is paired with the 'openai' tag and keeps exact
    GELU, which silently changes every activation of the frozen encoder, so the tag's setting is forced."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
    return {"force_quick_gelu": True} if cfg.get("quick_gelu") else {}


def load_clip(name: str, pretrained: str | None = None, device: str | torch.device = "cpu"):
    """Return an open_clip CLIP model in eval mode, fp32.

    `pretrained` is None (random init), an open_clip tag such as 'openai' (downloads, or uses the
    local cache), or a path to a weights file.
    """
    import open_clip

    register_builtin_configs()
    check_model_name(name)
    name = name.replace("/", "-")
    kwargs = {}
    if pretrained:
        is_tag = open_clip.get_pretrained_cfg(name, pretrained) not in (None, {})
        looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".pth", ".safetensors"))
        if not is_tag and (looks_like_path or os.path.exists(pretrained)):
            if not os.path.isfile(pretrained):
                raise LiftError(f"weights file {pretrained} does not exist. {_weights_help(name, 'openai')}")
        elif not is_tag:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ConfigError(
                f"'{pretrained}' is neither a weights file nor a pretrained tag of {name}; "
                f"valid tags: {', '.join(tags) or '(none)'}"
            )
        kwargs["pretrained"] = pretrained
        kwargs.update(tag_kwargs(name, pretrained))
    try:
        with _quiet_random_init_warning():
            model = open_clip.create_model(name, device=device, precision="fp32", **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        if pretrained and os.path.isfile(pretrained):
            raise LiftError(
                f"could not load weights file {pretrained} into {name}: {str(e).splitlines()[0][:300]}. "
                f"Is it a complete, uncorrupted open_clip/OpenAI checkpoint for this architecture?"
            ) from e
        if pretrained:
            raise LiftError(f"pretrained weights '{pretrained}' for {name} are unavailable. {_weights_help(name, pretrained)}") from e
        raise
    except Exception as e:  # corrupt pickles raise e.g. UnpicklingError, EOFError
        if pretrained and os.path.isfile(pretrained):
            raise LiftError(f"could not read weights file {pretrained}: {type(e).__name__}: {e}") from e
        raise
    model.eval()
    return model


def get_tokenizer(name: str):
    import open_clip

    register_builtin_configs()
    return open_clip.get_tokenizer(name.replace("/", "-"))
