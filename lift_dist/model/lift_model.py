"""LiftModel: frozen CLIP image encoder + lightweight modules + classifier head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from lift_dist.errors import ConfigError, DataError
from lift_dist.heads import build_head
from lift_dist.model.backbone import load_clip
from lift_dist.model.vit import PeftViT
from lift_dist.peft import apply_peft

if TYPE_CHECKING:
    from lift_dist.config import ModelConfig


class LiftModel(nn.Module):
    def __init__(self, encoder: PeftViT, head: nn.Module, peft_info: dict, config: ModelConfig, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.peft_info = peft_info
        self.config = config
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, cached_from: int | None = None) -> torch.Tensor:
        """Logits for images, or for cached frozen features (`encoder.forward_to(images, cached_from)`)."""
        if cached_from is not None:
            return self.head(self.encoder.forward_from(images, cached_from))
        return self.head(self.encoder(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    # ---- trainable tensors -------------------------------------------------------------------
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.trainable_named_parameters()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load exactly the trainable tensors; any mismatch is an error that says what differs."""
        own = dict(self.trainable_named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} trainable tensor(s) missing (e.g. {missing[0]})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]})")
            raise DataError(
                f"{source} does not match this model ({', '.join(parts)}): it was saved with other "
                f"modules or options than {self.config.peft} / {self.num_classes} classes"
            )
        for n, t in state.items():
            if tuple(t.shape) != tuple(own[n].shape):
                raise DataError(f"{source}: tensor {n} has shape {tuple(t.shape)}, the model expects {tuple(own[n].shape)}")
        with torch.no_grad():
            for n, t in state.items():
                own[n].copy_(t.to(own[n].dtype))

    def parameter_report(self) -> dict:
        head = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        total_trainable = sum(p.numel() for _, p in self.trainable_named_parameters())
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        report = {
            "model": self.config.name,
            "modules": list(self.peft_info),
            "num_classes": self.num_classes,
            "peft": total_trainable - head,
            "head": head,
            "trainable": total_trainable,
            "frozen": frozen,
            "blocks": self.encoder.num_layers,
            "width": self.encoder.width,
        }
        for info in self.peft_info.values():
            for key in ("r", "alpha", "length"):
                if key in info:
                    report[key] = info[key]
        report["per_module"] = {
            name: {k: v for k, v in info.items() if k != "layers"} | ({"layers": _span(info["layers"])} if "layers" in info else {})
            for name, info in self.peft_info.items()
        }
        return report


def _span(layers: list[int]) -> str:
    """Compact block list for reports: [0..11] -> '0-11', [0, 5] -> '0,5'."""
    if layers and layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers)) or "none"


def build_model(config: ModelConfig, num_classes: int, clip_model=None):
    """Build the LiftModel; returns (model, clip_model). The caller uses `clip_model` for the semantic
    head init and then drops it (the text tower is not needed for training)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    peft_configs = config.peft_configs()
    if clip_model is None:
        # A randomly initialised backbone (tests, `tiny`) must be the same in every process and in
        # every later `predict`, so it is drawn from a fixed seed without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            clip_model = load_clip(config.name, config.pretrained)
    clip_model.requires_grad_(False)
    encoder = PeftViT(clip_model.visual)
    peft_info = apply_peft(encoder, peft_configs, num_classes)
    head = build_head(config.head, encoder.width, num_classes, scale=config.scale)
    return LiftModel(encoder, head, peft_info, config, num_classes), clip_model
