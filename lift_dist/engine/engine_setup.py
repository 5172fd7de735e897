"""Building what the trainer runs: seeds, the model on its device and the DeepSpeed engine around the
optimizer (lift_dist/engine/optimizer.py)."""

from __future__ import annotations

import gc
import os
import random

import deepspeed
import numpy as np
import torch

from lift_dist.config import RunConfig
from lift_dist.engine.distributed import DistInfo
from lift_dist.engine.head_setup import init_head
from lift_dist.engine.optimizer import build_optimizer
from lift_dist.model.lift_model import build_model


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_model_on(cfg: RunConfig, plan, info: DistInfo):
    """The LiftModel with its head initialised, on the device (compiled on GPU); and the resolution."""
    model, clip = build_model(cfg.model, plan.train.num_classes)
    resolution = cfg.data.resolution or model.encoder.image_size
    init_head(model, clip, cfg, info, plan.train, resolution)
    del clip  # frees the text tower; the encoder keeps only the visual modules it uses
    gc.collect()
    model.to(info.device)
    if cfg.compile == "always" or (cfg.compile == "auto" and info.device.type == "cuda"):
        # In place, so parameter names (and checkpoints) are unchanged. Measured on an H100, ViT-B/16
        # AdaptFormer bf16: 2,613 -> 4,009 img/s (benchmarks/step.py --compile).
        model.encoder.compile()
    return model, resolution


def deepspeed_config(cfg: RunConfig, micro: int, accum: int, world: int, precision: str = "fp32") -> dict:
    return {
        "train_batch_size": micro * accum * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "zero_optimization": {"stage": cfg.optim.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "comms_logger": {"enabled": os.environ.get("LIFT_DIST_COMMS_LOG") == "1", "prof_all": True, "verbose": False},
        # DeepSpeed switches off an outer torch.autocast inside its engine; the precision must be configured
        # here. No module is listed as lower-precision-safe, so gradients are all-reduced in fp32. fp16
        # (the official codes' AMP) comes with DeepSpeed's torch GradScaler (ZeRO 0, checked in the config).
        "torch_autocast": {"enabled": precision in ("bf16", "fp16"), "dtype": "float16" if precision == "fp16" else "bfloat16",
                           "lower_precision_safe_modules": []},
    }


def grad_scaler(engine):
    """The loss scaler of an fp16 (AMP) engine, or None: its state belongs in the checkpoint."""
    return getattr(engine, "torch_autocast_z0_gradscaler", None)


def build_engine(model, params, cfg: RunConfig, plan, precision: str):
    optimizer = build_optimizer(cfg.optim, params)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=optimizer, dist_init_required=False,
                                      config=deepspeed_config(cfg, plan.micro, plan.accum, plan.world, precision))
    return engine
