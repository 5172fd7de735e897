"""The CLIP image encoder with insertion points ("sites") for lightweight modules.

The frozen open_clip weights are used as they are; the block computation is written out here
(as LIFT does) so that modules can hook into it:

    x  <- prompt(x)                                   VPT
    h  =  ssf_ln1(ln_1(x))
    qkv = linear(h; attn_in) (+ lora_q(h), lora_v(h) on q, v); qkv = ssf_attn_in(qkv)
    o  =  ssf_attn_out(linear(sdpa(q, k, v); attn_out))
    x  =  x + ls_1(o)
    h  =  ssf_ln2(ln_2(x))
    f  =  ssf_mlp_out(linear(act(ssf_mlp_in(linear(h; mlp_in))); mlp_out))
    f  =  f + adapter(f)                              sequential Adapter
    out = x + ls_2(f) + adaptformer(x)                parallel AdaptFormer (reads pre-ln_2 stream)

`linear(...; name)` uses the frozen weight unless a weight provider for `name` is installed
(sparse fine-tuning replaces a fraction of the entries with trainable values).
The output is ln_post(CLS) *before* the visual projection.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from lift_dist.errors import ConfigError

SITES = (
    "prompt",
    "ssf_ln1",
    "lora_q",
    "lora_v",
    "ssf_attn_in",
    "ssf_attn_out",
    "ssf_ln2",
    "ssf_mlp_in",
    "ssf_mlp_out",
    "adapter",
    "adaptformer",
)
LINEARS = ("attn_in", "attn_out", "mlp_in", "mlp_out")


class _QuickGELU(torch.autograd.Function):
    """open_clip's QuickGELU, x·σ(1.702x) (OpenAI CLIP's activation), with a one-kernel backward.

    The forward is open_clip's own expression, so values are unchanged. Autograd would differentiate
    it in five passes over the (B, N, 4D) hidden tensor; but d/dx x·σ(1.702x) = silu'(1.702x), so
    `silu_backward` does it in one, and only 1.702x is kept for it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        z = 1.702 * x
        ctx.save_for_backward(z)
        return x * torch.sigmoid(z)

    @staticmethod
    @torch.autograd.function.once_differentiable  # z is saved without its graph: no second derivative
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad, z)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return _QuickGELU.apply(x) if torch.is_grad_enabled() and x.requires_grad else x * torch.sigmoid(1.702 * x)


class PeftBlock(nn.Module):
    """One open_clip ResidualAttentionBlock, computed explicitly, with optional modules at sites."""

    LINEARS = LINEARS  # the linear layers whose weights a provider may replace (sparse fine-tuning)

    def __init__(self, block: nn.Module, index: int):
        super().__init__()
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not hasattr(block, "mlp"):
            raise ConfigError(
                f"block {index} is a {type(block).__name__} with {type(attn).__name__} attention; "
                "lift-dist supports open_clip ViTs built from ResidualAttentionBlock + nn.MultiheadAttention "
                "(OpenAI/LAION CLIP ViTs)"
            )
        mlp_keys = [k for k, _ in block.mlp.named_children()]
        if mlp_keys != ["c_fc", "gelu", "c_proj"]:
            raise ConfigError(f"block {index}: unsupported MLP layout {mlp_keys} (expected c_fc, gelu, c_proj)")
        self.index = index
        self.block = block
        self.num_heads = attn.num_heads
        self.quick_gelu = isinstance(block.mlp.gelu, QuickGELU)  # then computed by quick_gelu (same values, faster backward)
        self.sites = nn.ModuleDict()
        self.weights = nn.ModuleDict()  # LINEARS name -> module whose forward(w, b) returns (w, b)

    def add(self, site: str, module: nn.Module, owner: str) -> None:
        if site not in SITES:
            raise ValueError(f"unknown site {site}")
        if site in self.sites:
            raise ConfigError(f"block {self.index}: two modules want site '{site}' ({owner} and another)")
        self.sites[site] = module

    def set_weight_provider(self, name: str, module: nn.Module) -> None:
        if name in self.weights:
            raise ConfigError(f"block {self.index}: weights of '{name}' are already replaced")
        self.weights[name] = module

    def frozen_linear(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.block
        if name == "attn_in":
            return b.attn.in_proj_weight, b.attn.in_proj_bias
        if name == "attn_out":
            return b.attn.out_proj.weight, b.attn.out_proj.bias
        if name == "mlp_in":
            return b.mlp.c_fc.weight, b.mlp.c_fc.bias
        if name == "mlp_out":
            return b.mlp.c_proj.weight, b.mlp.c_proj.bias
        raise KeyError(name)

    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        w, b = self.frozen_linear(name)
        if name in self.weights:
            w, b = self.weights[name](w, b)
        return F.linear(x, w, b)

    def _site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        m = self.sites[name] if name in self.sites else None
        return x if m is None else m(x)

    def _attention_inputs(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, heads, N, head_dim): views of the one in-projection output where possible.
        LoRA adds to q and v apart; they are joined again only when SSF needs the three side by side
        (a cat copies the (B, N, 3D) tensor forward and back)."""
        s = self.sites
        qkv = self._linear("attn_in", h)
        if "lora_q" in s or "lora_v" in s:
            q, k, v = qkv.chunk(3, dim=-1)
            if "lora_q" in s:
                q = q + s["lora_q"](h)
            if "lora_v" in s:
                v = v + s["lora_v"](h)
            if "ssf_attn_in" not in s:
                return self._heads(q, k, v)
            qkv = torch.cat([q, k, v], dim=-1)
        return self._heads(*self._site("ssf_attn_in", qkv).chunk(3, dim=-1))

    def _heads(self, *ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in ts)

    def forward(self, x: torch.Tensor, seq_len: int, cls_only: bool = False) -> torch.Tensor:  # x: (B, N, D)
        """`cls_only` (the last block, whose CLS token alone is read): every token's keys and values,
        but only the CLS query, output projection and MLP -- in the forward pass, and in the backward
        pass, which would otherwise push zero gradients through the other tokens' MLP."""
        s, blk = self.sites, self.block
        if "prompt" in s:
            x = s["prompt"](x, seq_len)
        h = self._site("ssf_ln1", blk.ln_1(x))
        q, k, v = self._attention_inputs(h)
        if cls_only:
            q, x = q[:, :, :1], x[:, :1]
        o = F.scaled_dot_product_attention(q, k, v)  # fused kernel; default scale 1/sqrt(head_dim)
        o = o.transpose(1, 2).flatten(2)
        o = self._site("ssf_attn_out", self._linear("attn_out", o))
        x = x + blk.ls_1(o)
        h = self._site("ssf_ln2", blk.ln_2(x))
        u = self._site("ssf_mlp_in", self._linear("mlp_in", h))
        u = quick_gelu(u) if self.quick_gelu else blk.mlp.gelu(u)
        f = self._site("ssf_mlp_out", self._linear("mlp_out", u))
        if "adapter" in s:
            f = f + s["adapter"](f)
        out = x + blk.ls_2(f)
        if "adaptformer" in s:
            out = out + s["adaptformer"](x)
        return out


class PeftViT(nn.Module):
    """open_clip VisionTransformer weights + PeftBlocks; returns the pre-projection CLS feature."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        if type(visual).__name__ != "VisionTransformer":
            raise ConfigError(f"the image tower is a {type(visual).__name__}; lift-dist needs an open_clip ViT")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ConfigError("only ViTs pooled by the CLS token (pool_type 'tok', no attentional pooling) are supported")
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.ln_post = visual.ln_post
        # Kept (frozen) for the semantic head init, which maps text features back through projᵀ.
        self.proj = visual.proj
        self.blocks = nn.ModuleList(PeftBlock(b, i) for i, b in enumerate(visual.transformer.resblocks))
        self.width = self.ln_post.weight.numel()
        self.patch_size = self.conv1.kernel_size[0]
        self.image_size = int(round((self.positional_embedding.shape[0] - 1) ** 0.5)) * self.patch_size
        self.seq_len = self.positional_embedding.shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.embed(images), 0)

    def _run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for i in range(start, stop):
            x = self.blocks[i](x, self.seq_len, cls_only=i == self.num_layers - 1)
        return x

    @contextlib.contextmanager
    def without_modules(self):
        """The pretrained encoder alone for a while: every module site and weight provider detached
        (LIFT's `use_tuner=False`, for the head-init features); unfrozen pretrained tensors stay, and
        are still the pretrained values before training."""
        saved = [(blk.sites, blk.weights) for blk in self.blocks]
        for blk in self.blocks:
            blk.sites, blk.weights = nn.ModuleDict(), nn.ModuleDict()
        try:
            yield self
        finally:
            for blk, (sites, weights) in zip(self.blocks, saved):
                blk.sites, blk.weights = sites, weights

    # ---- split at a frozen prefix (cached features) -------------------------------------------
    def frozen_prefix(self) -> int:
        """How much of the encoder is a fixed function of the image: the index of the first block a
        module changes or trains (0 if the embedding is trained), or num_layers + 1 when only the head
        is trained (then the final feature itself is fixed)."""
        embed = [self.conv1.weight, self.class_embedding, self.positional_embedding, *self.ln_pre.parameters()]
        if any(p.requires_grad for p in embed):
            return 0
        for i, blk in enumerate(self.blocks):
            if len(blk.sites) or len(blk.weights) or any(p.requires_grad for p in blk.parameters()):
                return i
        return self.num_layers + int(not any(p.requires_grad for p in self.ln_post.parameters()))

    def forward_to(self, images: torch.Tensor, cut: int) -> torch.Tensor:
        """Tokens entering block `cut` (B, N, D) -- after the last block (cut = num_layers) its CLS token
        alone, (B, 1, D) -- or the final feature (B, D) for cut = num_layers + 1."""
        x = self._run_blocks(self.embed(images), 0, min(cut, self.num_layers))
        return self.ln_post(x[:, 0]) if cut > self.num_layers else x

    def forward_from(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        """The rest of `forward` from what `forward_to(images, cut)` returned."""
        if cut > self.num_layers:
            return x
        return self.ln_post(self._run_blocks(x, cut, self.num_layers)[:, 0])
