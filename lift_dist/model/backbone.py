"""Loading open_clip CLIP models by name, with weights from a tag or a local file.

`tiny` is a built-in, randomly initialised CLIP (ViT, patch 16, 64 px, real BPE tokenizer) for tests
and demos; it works wherever a model name does.

Weights files are read as data only: safetensors, `torch.load(weights_only=True)`, or, for OpenAI's
own TorchScript archives (ViT-B-16.pt from the CLIP release), the archive's tensors alone
(`torchscript.read_torchscript_state`: `torch.jit.load` would run the archive's TorchScript), checked
against the model.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import open_clip
import torch

from lift_dist.errors import ConfigError, LiftError
from lift_dist.model import registry
from lift_dist.model.torchscript import read_torchscript_state

_CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False
JIT_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")  # attributes of OpenAI's archives, not weights


def register_builtin_configs() -> None:
    """Add lift-dist's model configs (`tiny`) to open_clip's registry (once)."""
    global _registered
    if _registered:
        return
    for path in sorted(_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(path)
    _registered = True


def check_model_name(name: str) -> None:
    if registry.vision_geometry(name) is None:
        raise ConfigError(f"unknown model '{name}'. Valid ViT names include: {', '.join(registry.vit_names())}")


def _weights_help(name: str, tag: str) -> str:
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
    cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
    return {"force_quick_gelu": True} if cfg.get("quick_gelu") else {}


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """TorchScript archives are zip files with a code/ directory and constants.pkl (torch.save zips have neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def check_weights(name: str, pretrained: str) -> None:
    """Before anything starts: a tag open_clip knows for `name`, or a weights file that reads as data
    (torch's zip format maps its tensors without loading them, so a truncated, corrupt or
    code-carrying file is named in a second even for ViT-L). Shapes are checked at model build."""
    register_builtin_configs()
    name = registry.canonical(name)
    if not _check_weights_arg(name, pretrained):
        return  # a tag
    try:
        if is_torchscript_archive(pretrained):
            read_torchscript_state(pretrained, load=False)  # structure and sizes; the data is read at model build
        elif pretrained.endswith(".safetensors"):
            from safetensors import safe_open  # noqa: PLC0415  (only for .safetensors files)

            with safe_open(pretrained, "pt") as f:
                f.keys()
        else:
            torch.load(pretrained, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(pretrained))
    except Exception as e:  # torch.load's refusals, truncated zips, corrupt headers, a foreign data.pkl
        raise LiftError(f"weights file {pretrained} cannot be read as a checkpoint ({type(e).__name__}: "
                        f"{first_line(e, 200)}); is it a complete open_clip/OpenAI checkpoint?") from None


def first_line(e: BaseException, limit: int) -> str:
    """An exception's message on one line (some, e.g. a bare KeyError, carry none)."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else repr(e))[:limit]


def _load_torchscript_weights(model: torch.nn.Module, path: str) -> None:
    try:
        state = read_torchscript_state(path)
    except Exception as e:  # a damaged or foreign archive: BadZipFile, KeyError, ValueError, UnpicklingError
        raise LiftError(f"could not read TorchScript weights file {path} ({type(e).__name__}: {first_line(e, 300)}); "
                        "is it a complete OpenAI/TorchScript CLIP archive?") from None
    own = model.state_dict()
    # Tracing records non-persistent buffers (the text tower's attention mask) as state; they are not weights.
    derived = {n for n, _ in model.named_buffers()} - set(own)
    state = {k: v for k, v in state.items() if k not in JIT_ONLY_KEYS and k not in derived}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        what = (f"{len(missing)} tensor(s) missing (e.g. {missing[0]})" if missing else
                f"{len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]})" if unexpected else
                f"tensor {shapes[0]} has shape {tuple(state[shapes[0]].shape)}, the model {tuple(own[shapes[0]].shape)}")
        raise LiftError(f"weights file {path} does not match the model: {what}; is it for this architecture?")
    model.load_state_dict(state, strict=True)


def _check_weights_arg(name: str, pretrained: str) -> bool:
    """True when `pretrained` is a weights file; a tag that open_clip does not know is an error."""
    is_tag = open_clip.get_pretrained_cfg(name, pretrained) not in (None, {})
    looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".pth", ".safetensors"))
    if not is_tag and (looks_like_path or os.path.exists(pretrained)):
        if not os.path.isfile(pretrained):
            raise LiftError(f"weights file {pretrained} does not exist. {_weights_help(name, 'openai')}")
        return True
    if not is_tag:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(f"'{pretrained}' is neither a weights file nor a pretrained tag of {name}; "
                          f"valid tags: {', '.join(tags) or '(none)'}")
    return False


def _create(name: str, device, **kwargs):
    with _quiet_random_init_warning():
        return open_clip.create_model(name, device=device, precision="fp32", **kwargs)


def load_clip(name: str, pretrained: str | None = None, device: str | torch.device = "cpu"):
    """Return an open_clip CLIP model in eval mode, fp32.

    `pretrained` is None (random init), an open_clip tag such as 'openai' (downloads, or uses the
    local cache), or a path to a weights file.
    """
    register_builtin_configs()
    check_model_name(name)
    name = registry.canonical(name)
    if not pretrained:
        model = _create(name, device)
    elif _check_weights_arg(name, pretrained):
        model = _load_file(name, pretrained, device)
    else:
        try:
            model = _create(name, device, pretrained=pretrained, **tag_kwargs(name, pretrained))
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            raise LiftError(f"pretrained weights '{pretrained}' for {name} are unavailable. {_weights_help(name, pretrained)}") from e
    model.eval()
    return model


def _load_file(name: str, path: str, device):
    model = _create(name, device)
    if is_torchscript_archive(path):
        _load_torchscript_weights(model, path)
        return model
    try:
        open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    except Exception as e:  # torch.load's refusals, corrupt pickles (UnpicklingError, EOFError), shape mismatches
        raise LiftError(f"could not load weights file {path} into {name}: {type(e).__name__}: {first_line(e, 300)}. "
                        "Is it a complete, uncorrupted open_clip/OpenAI checkpoint for this architecture?") from None
    return model


def get_tokenizer(name: str):
    register_builtin_configs()
    return open_clip.get_tokenizer(registry.canonical(name))
