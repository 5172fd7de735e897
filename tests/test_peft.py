"""Lightweight modules: identity at init, gradients, parameter counts, layer selection, bad input."""

import copy

import pytest
import torch

from lift_dist.config import ModelConfig
from lift_dist.errors import ConfigError
from lift_dist.model.backbone import load_clip
from lift_dist.model.lift_model import build_model
from lift_dist.model.vit import PeftViT, quick_gelu
from lift_dist.peft import REGISTRY, apply_peft, first_touched_block, make_configs
from lift_dist.peft.base import default_bottleneck, select_layers
from lift_dist.peft.sparse import default_alpha


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    clip = load_clip("tiny")
    clip.requires_grad_(False)
    return clip


def make_encoder(clip, names, num_classes=20, **kw):
    visual = copy.deepcopy(clip.visual)
    enc = PeftViT(visual)
    info = apply_peft(enc, make_configs(names, **kw), num_classes)
    return enc, info


def images(n=3, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def trainable(enc):
    return {n: p for n, p in enc.named_parameters() if p.requires_grad}


def test_encoder_matches_open_clip_forward(tiny_clip):
    enc, _ = make_encoder(tiny_clip, ["none"])
    x = images()
    v = tiny_clip.visual
    with torch.no_grad():
        ref = v.ln_post(v.transformer(v._embeds(x))[:, 0])  # pre-projection CLS
        out = enc(x)
    assert out.shape == (3, v.ln_post.weight.numel())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_quick_gelu_gives_open_clips_values_and_gradients(tiny_clip):
    """OpenAI CLIP's activation with its one-kernel backward (silu'(1.702x)): the forward is open_clip's
    own expression, bit for bit; the gradient is autograd's of it up to rounding, and exact in float64."""
    enc, _ = make_encoder(tiny_clip, ["none"])
    act = tiny_clip.visual.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU" and all(b.quick_gelu for b in enc.blocks)
    x = (torch.randn(4, 17, 512, generator=torch.Generator().manual_seed(0)) * 4).requires_grad_()
    ours, ref = quick_gelu(x), act(x)
    assert torch.equal(ours, ref)
    g = torch.randn_like(ours)
    (got,), (want,) = torch.autograd.grad(ours, x, g), torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(quick_gelu, (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("names", [["adaptformer"], ["adapter"], ["lora"], ["adaptformer", "adapter", "lora"]])
def test_additive_modules_start_as_exact_identity(tiny_clip, names):
    base, _ = make_encoder(tiny_clip, ["none"])
    enc, _ = make_encoder(tiny_clip, names)
    assert all(REGISTRY[n].identity_at_init for n in names)
    x = images()
    with torch.no_grad():
        assert torch.equal(enc(x), base(x))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_last_block_on_the_cls_token_alone_changes_nothing(tiny_clip, name):
    """The last block computes only the CLS token past its keys and values: the same feature and the
    same gradients as running it on every token, for every method."""
    enc, _ = make_encoder(tiny_clip, [name], length=5) if name.startswith("vpt") else make_encoder(tiny_clip, [name])
    with torch.no_grad():
        for p in trainable(enc).values():
            p.add_(0.01 * torch.randn_like(p))
    x = images()

    def every_token(x):
        x = enc.embed(x)
        for blk in enc.blocks:
            x = blk(x, enc.seq_len)
        return enc.ln_post(x[:, 0])

    feats, grads = [], []
    for f in (enc, every_token):
        out = f(x)
        feats.append(out.detach())
        if trainable(enc):
            out.square().mean().backward()
            grads.append({n: p.grad.clone() for n, p in trainable(enc).items()})
            enc.zero_grad(set_to_none=True)
    torch.testing.assert_close(feats[0], feats[1], atol=1e-5, rtol=1e-5)
    for n in grads[0] if grads else ():
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.parametrize(("names", "layers"), [
    ([n], layers) for n in sorted(REGISTRY) for layers in (None, "last:1", "2,3", "none") if n != "vpt-shallow" or layers is None
] + [(["vpt-shallow", "partial"], "last:2"), (["lora", "bitfit"], None)])
def test_the_first_block_a_config_touches_is_the_built_models_frozen_prefix(tiny_clip, names, layers):
    """What config validation predicts (a feature cache needs a frozen part before block k) is what
    the built encoder says from its trainable tensors and attached modules."""
    kw = {"layers": layers} if layers is not None else {}
    enc, _ = make_encoder(tiny_clip, names, **kw)
    assert first_touched_block(make_configs(names, **kw), enc.num_layers) == min(enc.frozen_prefix(), enc.num_layers)


@pytest.mark.parametrize("names", [["vpt-shallow"], ["vpt-deep"], ["ssf"]])
def test_non_identity_modules_change_the_output(tiny_clip, names):
    base, _ = make_encoder(tiny_clip, ["none"])
    enc, _ = make_encoder(tiny_clip, names)
    x = images()
    with torch.no_grad():
        assert not torch.allclose(enc(x), base(x))


def accumulate_grad_leaves(loss):
    """Every leaf tensor autograd will compute a gradient for (AccumulateGrad nodes of the graph)."""
    seen, leaves, stack = set(), [], [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.append(fn.variable)
        stack.extend(f for f, _ in fn.next_functions)
    return leaves


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_gradients_only_for_trainable_tensors(tiny_clip, name):
    enc, _ = make_encoder(tiny_clip, [name])
    train = trainable(enc)
    if name == "none":
        assert train == {}
        return
    # Up-projections start at zero; nudge every trainable tensor so all of them receive gradient.
    with torch.no_grad():
        for p in train.values():
            p.add_(0.01 * torch.randn_like(p))
    out = enc(images())
    loss = out.square().mean()
    leaves = accumulate_grad_leaves(loss)
    # Autograd computes gradients for exactly the trainable tensors, never for a frozen weight.
    assert {id(t) for t in leaves} == {id(p) for p in train.values()}
    loss.backward()
    for n, p in enc.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        else:
            assert p.grad is None, n


def test_sparse_updates_only_masked_entries(tiny_clip):
    enc, info = make_encoder(tiny_clip, ["sparse"], alpha=0.05)
    blk = enc.blocks[1]
    w0, b0 = (t.clone() for t in blk.weights["mlp_in"](*blk.frozen_linear("mlp_in")))
    # Starts identical to the pretrained weights.
    assert torch.equal(w0, blk.block.mlp.c_fc.weight) and torch.equal(b0, blk.block.mlp.c_fc.bias)
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=1.0)
    enc(images()).square().mean().backward()
    opt.step()
    w1, b1 = blk.weights["mlp_in"](*blk.frozen_linear("mlp_in"))
    changed = torch.cat([(w1 != w0), (b1 != b0)[:, None]], dim=1)
    mask = blk.weights["mlp_in"].mask
    assert changed.any() and not (changed & ~mask).any()
    # The frozen weight itself is untouched.
    assert torch.equal(blk.block.mlp.c_fc.weight, tiny_clip.visual.transformer.resblocks[1].mlp.c_fc.weight)


def test_sparse_mask_layout_follows_lift(tiny_clip):
    """One generator over blocks in order, layers attn_in, attn_out, mlp_in, mlp_out; flat index j is
    row j // (in+1), column j % (in+1) of [W | b]."""
    alpha = 0.03
    enc, _ = make_encoder(tiny_clip, ["sparse"], alpha=alpha, seed=7)
    gen = torch.Generator().manual_seed(7)
    for blk in enc.blocks:
        for name in ("attn_in", "attn_out", "mlp_in", "mlp_out"):
            w, _ = blk.frozen_linear(name)
            out_f, in_f = w.shape
            n = out_f * (in_f + 1)
            idx = torch.randperm(n, generator=gen)[: int(n * alpha)]
            mask = blk.weights[name].mask
            assert int(mask.sum()) == int(n * alpha)
            rows, cols = idx // (in_f + 1), idx % (in_f + 1)
            assert mask[rows, cols].all()


def test_vpt_sequence_lengths(tiny_clip):
    seen = []
    for name, expect in (("vpt-shallow", "carried"), ("vpt-deep", "replaced")):
        enc, _ = make_encoder(tiny_clip, [name], length=5)
        lengths = []
        hooks = [b.register_forward_hook(lambda m, i, o, seen=lengths: seen.append(o.shape[1])) for b in enc.blocks]
        with torch.no_grad():
            enc(images(n=1))
        for h in hooks:
            h.remove()
        # Prompts are appended once (shallow) or replaced per block (deep): never accumulated. The last
        # block returns its CLS token alone (the only one read).
        assert lengths == [enc.seq_len + 5] * (enc.num_layers - 1) + [1], (name, lengths)
        seen.append(expect)
    assert seen == ["carried", "replaced"]


def per_block_counts(D, r, C):
    return {
        "adaptformer": 2 * D * r + r + 3 * D + 1,
        "adapter": 2 * D + D * r + r + r * D + D,
        "lora": 2 * 2 * D * r,
        "bitfit": 11 * D,
        "ln": 4 * D,
        "ssf": 2 * (3 * D + D) + 2 * (4 * D + D),
        "vpt-deep": 10 * D,
        "full": 12 * D * D + 13 * D,
    }


@pytest.mark.parametrize("name", ["adaptformer", "adapter", "lora", "bitfit", "ln", "ssf", "vpt-deep", "full"])
def test_parameter_count_matches_formula(tiny_clip, name):
    C = 100
    enc, info = make_encoder(tiny_clip, [name], num_classes=C)
    D, L = enc.width, enc.num_layers
    r = default_bottleneck(C, L)
    assert info[name].get("r", r) == r
    got = sum(p.numel() for p in trainable(enc).values())
    assert got == L * per_block_counts(D, r, C)[name]


def test_parameter_counts_for_partial_layers_and_shallow_vpt(tiny_clip):
    enc, info = make_encoder(tiny_clip, ["adaptformer"], r=8, layers="last:2")
    D = enc.width
    assert info["adaptformer"]["layers"] == [2, 3]
    assert sum(p.numel() for p in trainable(enc).values()) == 2 * (2 * D * 8 + 8 + 3 * D + 1)
    enc, _ = make_encoder(tiny_clip, ["vpt-shallow"])
    assert sum(p.numel() for p in trainable(enc).values()) == 10 * D
    enc, info = make_encoder(tiny_clip, ["sparse"], alpha=0.01, layers="0,3")
    D = enc.width
    expect = 2 * sum(int(0.01 * o * (i + 1)) for o, i in ((3 * D, D), (D, D), (4 * D, D), (D, 4 * D)))
    assert sum(p.numel() for p in trainable(enc).values()) == expect


def test_default_sizes_follow_the_papers():
    assert [default_bottleneck(c, 12) for c in (1000, 365, 8142, 100)] == [32, 8, 256, 4]
    assert [default_bottleneck(c, 24) for c in (1000, 365, 8142, 100)] == [16, 4, 128, 2]
    assert default_bottleneck(1000, 12, divisor=4) == 16
    # LIFT's own float flooring `x // 0.001 * 0.001`: 9.0 * 0.001 is 0.009000000000000001 (the same counts).
    assert [default_alpha(c, 12, 768) for c in (1000, 365, 8142, 100)] == pytest.approx([0.009, 0.003, 0.073, 0.001], abs=1e-15)


def test_layer_selection():
    assert select_layers("all", 12, "m") == list(range(12))
    assert select_layers("last:3", 12, "m") == [9, 10, 11]
    assert select_layers("0,5,11", 12, "m") == [0, 5, 11]
    assert select_layers("none", 12, "m") == []
    with pytest.raises(ConfigError, match="layer index 12 is out of range; valid block indices are 0..11"):
        select_layers("0,12", 12, "adaptformer")
    with pytest.raises(ConfigError, match="last:13 is out of range"):
        select_layers("last:13", 12, "adaptformer")


@pytest.mark.parametrize(
    "names, kw, message",
    [
        (["adaptformr"], {}, "unknown lightweight module 'adaptformr'; valid: adapter, adaptformer"),
        (["adaptformer"], {"r": 0}, "model.r=0 is not valid: Input should be greater than or equal to 1"),
        (["sparse"], {"alpha": 0.0}, "model.alpha=0.0 is not valid: Input should be greater than 0"),
        (["sparse"], {"alpha": 1.5}, "model.alpha=1.5 is not valid: Input should be less than or equal to 1"),
        (["adaptformer"], {"layers": "3,9"}, "layer index 9 is out of range; valid block indices are 0..3"),
        (["bitfit"], {"r": 4}, "option 'r' does not apply to bitfit"),
        (["none", "lora"], {}, "cannot be combined"),
    ],
)
def test_bad_module_settings_name_the_culprit(tiny_clip, names, kw, message):
    with pytest.raises(ConfigError, match=message):
        make_encoder(tiny_clip, names, **kw)


def test_two_modules_on_one_site_is_an_error(tiny_clip):
    enc, _ = make_encoder(tiny_clip, ["adaptformer"])
    with pytest.raises(ConfigError, match="two modules want site 'adaptformer'"):
        apply_peft(enc, make_configs(["adaptformer"]), 10)


@pytest.mark.parametrize("peft", [["bitfit", "sparse"], ["full", "sparse"], ["sparse", "partial"]])
def test_sparse_refuses_blocks_another_method_trains(peft):
    # Its weights are rebuilt from detached entries: the other method's tensors there would get no gradient.
    with pytest.raises(ConfigError, match="sparse cannot share block"):
        build_model(ModelConfig(name="tiny", peft=peft, head_init="random"), 5)
    # Disjoint blocks are fine, and then every trainable tensor gets a gradient.
    model, _ = build_model(ModelConfig(name="tiny", peft=peft, head_init="random",
                                       peft_options={peft[0]: {"layers": "0,1"}, peft[1]: {"layers": "2,3"}}), 5)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for _, p in model.trainable_named_parameters())


def test_vpt_shallow_takes_no_layer_selection():
    with pytest.raises(ConfigError, match="option 'layers' does not apply to vpt-shallow"):
        build_model(ModelConfig(name="tiny", peft=["vpt-shallow"], layers="last:2", head_init="random"), 5)
    with pytest.raises(ConfigError, match="vpt-shallow has no option 'layers'"):
        build_model(ModelConfig(name="tiny", peft=["vpt-shallow"], peft_options={"vpt-shallow": {"layers": "1"}}, head_init="random"), 5)
    # Combined, a shared selection is for the other module; the prompt stays at block 0.
    model, _ = build_model(ModelConfig(name="tiny", peft=["vpt-shallow", "adaptformer"], layers="last:2", head_init="random"), 5)
    assert [b.index for b in model.encoder.blocks if "prompt" in b.sites] == [0]
    assert [b.index for b in model.encoder.blocks if "adaptformer" in b.sites] == [2, 3]
