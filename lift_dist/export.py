"""`lift-dist export`: a trained run as one self-contained inference model.

The frozen backbone and the trained modules become one network: what can be merged into the frozen
weights is (LoRA into the q / v projections, SSF folded into the linear layer or LayerNorm before it,
sparse fine-tuning materialised, BitFit / LayerNorm / partial / full tuning are the weights already);
AdaptFormer, Adapter and prompts stay modules. The network takes images in [0, 1] at the run's
resolution, normalises them itself and returns the head's logits. Formats:

    safetensors   every tensor, plus the metadata (architecture, classes, preprocessing) in the header;
                  read back as data (`ExportedModel`)
    torchscript   a traced module; the metadata in the archive's extra file `lift_dist.json`. Read back
                  (`predict --model`) as data too: its tensors alone, into the architecture its
                  metadata names (`torch.jit.load` would run the archive's TorchScript)
    onnx          an ONNX graph (batch dimension dynamic); the metadata in its metadata_props

The metadata holds the class names and the preprocessing the run evaluates with (resize, crop,
interpolation, TTE settings), so a server needs nothing else.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, StrictStr
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lift_dist.config import DataConfig, ModelConfig
from lift_dist.engine.evaluate import load_run
from lift_dist.errors import ConfigError, DataError
from lift_dist.model import registry
from lift_dist.model.backbone import first_line
from lift_dist.model.lift_model import build_model
from lift_dist.model.torchscript import read_torchscript_state
from lift_dist.run_dir import RunDir, check_output_file
from lift_dist.transforms import CLIP_MEAN, CLIP_STD
from lift_dist.validation import validate

FORMATS = ("safetensors", "torchscript", "onnx")
EXTRA_FILE = "lift_dist.json"
KEPT = ("adaptformer", "adapter", "vpt-shallow", "vpt-deep")  # modules that stay modules
FORMAT_VERSION = 1


class Classifier(nn.Module):
    """Images in [0, 1], (B, 3, H, W) at the model's resolution -> logits (B, C)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


# ---- merging ------------------------------------------------------------------------------------

def _fold_scale_shift(weight: torch.Tensor, bias: torch.Tensor, ssf) -> None:
    """y = (W x + b)·γ + β  ->  W' = diag(γ) W, b' = γ b + β (in place)."""
    g, s = ssf.gamma.detach(), ssf.beta.detach()
    weight.mul_(g.view(-1, *([1] * (weight.ndim - 1))))
    bias.mul_(g).add_(s)


@torch.no_grad()
def merge_block(blk) -> None:
    """Fold every mergeable module of one PeftBlock into its frozen tensors and detach it."""
    b = blk.block
    linears = {"attn_in": (b.attn.in_proj_weight, b.attn.in_proj_bias), "attn_out": (b.attn.out_proj.weight, b.attn.out_proj.bias),
               "mlp_in": (b.mlp.c_fc.weight, b.mlp.c_fc.bias), "mlp_out": (b.mlp.c_proj.weight, b.mlp.c_proj.bias)}
    for name, provider in list(blk.weights.items()):  # sparse: the trained entries written into the weights
        w, bias = provider(*linears[name])
        linears[name][0].copy_(w)
        linears[name][1].copy_(bias)
        del blk.weights[name]
    d = b.attn.in_proj_weight.shape[1]
    for site, rows in (("lora_q", slice(0, d)), ("lora_v", slice(2 * d, 3 * d))):
        if site in blk.sites:
            lora = blk.sites[site]  # q += (h A B) / r  ->  W_q += (A B)ᵀ / r
            b.attn.in_proj_weight[rows] += (lora.lora_A @ lora.lora_B).T * lora.scaling
            del blk.sites[site]
    for site, linear in (("ssf_attn_in", "attn_in"), ("ssf_attn_out", "attn_out"), ("ssf_mlp_in", "mlp_in"),
                         ("ssf_mlp_out", "mlp_out")):
        if site in blk.sites:
            _fold_scale_shift(*linears[linear], blk.sites[site])
            del blk.sites[site]
    for site, ln in (("ssf_ln1", b.ln_1), ("ssf_ln2", b.ln_2)):
        if site in blk.sites:
            _fold_scale_shift(ln.weight, ln.bias, blk.sites[site])
            del blk.sites[site]


def merged(model) -> nn.Module:
    """A copy of the LiftModel with everything mergeable merged (model.peft_info says what is left)."""
    model = copy.deepcopy(model).eval()
    for blk in model.encoder.blocks:
        merge_block(blk)
    model.requires_grad_(False)
    return model


def exported_model_config(model) -> ModelConfig:
    """The architecture of a merged model: the backbone (activation made explicit in the name) and the
    modules that stayed, with their resolved sizes and blocks, so it can be rebuilt without weights."""
    cfg = model.config
    name = registry.canonical(cfg.name)
    quick = type(model.encoder.blocks[0].block.mlp.gelu).__name__ == "QuickGELU"
    base_quick = bool((registry.model_config(name) or {}).get("quick_gelu"))
    if quick and not base_quick:  # OpenAI weights loaded through a tag: the activation must stay QuickGELU
        name = f"{name}-quickgelu"
        if registry.model_config(name) is None:
            raise ConfigError(f"cannot export {cfg.name} with QuickGELU: open_clip has no {name} config")
    kept = [m for m in model.peft_info if m in KEPT]
    options = {}
    for m in kept:
        info = model.peft_info[m]
        opts = {k: info[k] for k in ("r", "length") if k in info}
        if m != "vpt-shallow":
            opts["layers"] = list(info["layers"])
        options[m] = opts
    return ModelConfig(name=name, pretrained=None, peft=kept or ["none"], peft_options=options, head=cfg.head, scale=cfg.scale,
                       head_init="random")


def metadata(run: RunDir, cfg, model_cfg: ModelConfig, classes: dict, checkpoint: str) -> dict:
    d = cfg.data
    res = d.resolution or registry.vision_geometry(cfg.model.name).image_size
    return {
        "format": "lift-dist-export", "version": FORMAT_VERSION, "model": model_cfg.model_dump(mode="json"),
        "num_classes": len(classes["names"]), "class_names": classes["names"],
        "input": {"resolution": res, "range": [0.0, 1.0], "layout": "NCHW", "normalised_inside": True},
        "preprocessing": {"resize_shorter_side": res * 8 // 7, "center_crop": res, "interpolation": d.interpolation,
                          "tte": {"mode": d.tte_mode, "expand": d.tte_expand, "views": d.tte_views}},
        "source": {"run": str(run.path), "checkpoint": checkpoint},
    }


# ---- writing and reading ------------------------------------------------------------------------

def export(run_dir: Path, out: Path, fmt: str, checkpoint: str | None = None) -> dict:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = check_output_file(out, "--out", run=run_dir)
    run = RunDir(run_dir)
    classes = run.read_classes()
    model, cfg = load_run(run.path, checkpoint, num_classes=len(classes["names"]))
    net = merged(model)
    model_cfg = exported_model_config(net)
    meta = metadata(run, cfg, model_cfg, classes, str(checkpoint or "latest"))
    wrapper = Classifier(net).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    example = torch.rand(2, 3, meta["input"]["resolution"], meta["input"]["resolution"])
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in wrapper.state_dict().items()}, str(tmp), metadata={EXTRA_FILE: json.dumps(meta)})
    elif fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: json.dumps(meta)})
    else:
        _export_onnx(wrapper, example, tmp, meta)
    os.replace(tmp, out)
    return meta


def _optional(name: str):
    """onnx / onnxruntime, which only ONNX files need (the `export` extra)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"ONNX models need the {name} package: pip install 'lift-dist[export]'") from None


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    onnx = _optional("onnx")
    torch.onnx.export(wrapper, (example,), str(path), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    graph = onnx.load(str(path))
    graph.metadata_props.add(key=EXTRA_FILE, value=json.dumps(meta))
    onnx.save(graph, str(path))


def read_metadata(path: Path) -> tuple[str, dict]:
    """(format, metadata) of an exported file, read as data."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"exported model {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        if head[:2] == b"PK":  # a zip: TorchScript, whose extra files are read as plain zip members
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith(f"/extra/{EXTRA_FILE}")), None)
                if member is None:
                    raise KeyError(f"no extra/{EXTRA_FILE}")
                return "torchscript", json.loads(z.read(member))
        if path.suffix == ".onnx":
            props = {p.key: p.value for p in _optional("onnx").load(str(path), load_external_data=False).metadata_props}
            return "onnx", json.loads(props[EXTRA_FILE])
        with safe_open(str(path), framework="pt") as f:
            return "safetensors", json.loads((f.metadata() or {})[EXTRA_FILE])
    except ConfigError:  # onnx missing: the file may be fine
        raise
    except Exception as e:  # each reader's own refusal (safetensors' SafetensorError, onnx's DecodeError, ...)
        raise DataError(f"{path} is not a model written by `lift-dist export` (safetensors, TorchScript or ONNX; "
                        f"{type(e).__name__}: {first_line(e, 200)})") from None


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # keys a later version adds are kept and ignored


class _Input(_Open):
    resolution: PositiveInt


TteMode = DataConfig.model_fields["tte_mode"].annotation  # the values training accepts
Interpolation = DataConfig.model_fields["interpolation"].annotation


class _TestTime(_Open):
    mode: TteMode
    expand: NonNegativeInt
    views: PositiveInt


class _Preprocessing(_Open):
    interpolation: Interpolation
    tte: _TestTime


class ExportMetadata(_Open):
    """What `predict --model` reads from an export's metadata, checked before any model is built."""

    model: ModelConfig
    num_classes: PositiveInt
    class_names: list[StrictStr]
    input: _Input
    preprocessing: _Preprocessing


def check_metadata(path: Path, meta) -> dict:
    if not isinstance(meta, dict):
        raise DataError(f"{path}: its export metadata is a {type(meta).__name__}, not an object")
    try:
        checked = validate(ExportMetadata, meta)
    except ConfigError as e:
        raise DataError(f"{path}: export metadata {e}") from None
    if len(checked.class_names) != checked.num_classes:
        raise DataError(f"{path}: export metadata class_names holds {len(checked.class_names)} names for "
                        f"num_classes={checked.num_classes}")
    return meta


class ExportedModel:
    """An exported model ready to run: `logits(images in [0, 1])`, its metadata, its class names."""

    def __init__(self, path: Path, device: torch.device = torch.device("cpu")):
        self.path, self.device = Path(path), device
        self.format, meta = read_metadata(self.path)
        self.meta = check_metadata(self.path, meta)
        self.class_names = self.meta["class_names"]
        if self.format == "onnx":
            self.session = _optional("onnxruntime").InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        else:
            self.module = _rebuild(self.path, self.meta, self.format).to(device).eval()

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.format == "onnx":
            return torch.from_numpy(self.session.run(["logits"], {"images": images.float().cpu().numpy()})[0])
        return self.module(images.to(self.device)).float().cpu()


def _read_tensors(path: Path, fmt: str, wrapper: nn.Module) -> dict[str, torch.Tensor]:
    if fmt == "safetensors":
        return load_file(str(path))
    try:
        state = read_torchscript_state(path)
    except Exception as e:  # a damaged or foreign archive: BadZipFile, KeyError, ValueError, UnpicklingError
        raise DataError(f"{path}: its tensors cannot be read as data ({type(e).__name__}: {first_line(e, 200)})") from None
    # Tracing records non-persistent buffers (e.g. the CLIP normalisation constants) as state; the rebuilt network has its own.
    derived = {n for n, _ in wrapper.named_buffers()} - set(wrapper.state_dict())
    return {k: v for k, v in state.items() if k not in derived}


def _rebuild(path: Path, meta: dict, fmt: str) -> nn.Module:
    cfg = ModelConfig.model_validate(meta["model"])
    model, clip = build_model(cfg, meta["num_classes"])
    del clip
    wrapper = Classifier(model)
    state = _read_tensors(path, fmt, wrapper)
    own = wrapper.state_dict()
    if set(state) != set(own) or any(tuple(state[k].shape) != tuple(own[k].shape) for k in own):
        raise DataError(f"{path}: its tensors do not match the architecture in its own metadata")
    wrapper.load_state_dict(state, strict=True)
    return wrapper


def run(args: argparse.Namespace) -> int:
    meta = export(Path(args.run), Path(args.out), args.format, args.checkpoint)
    kept = ", ".join(meta["model"]["peft"])
    print(f"wrote {args.out} ({args.format}): {meta['model']['name']} + {kept}, {meta['num_classes']} classes, "
          f"input {meta['input']['resolution']} px in [0, 1]")
    return 0
