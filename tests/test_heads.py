import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from lift_dist.errors import ConfigError, DataError
from lift_dist.head_init import class_mean_weights, init_head, random_weights, semantic_weights
from lift_dist.heads import HEADS, CosineHead, L2NormHead, LinearHead, build_head
from lift_dist.model.backbone import get_tokenizer, load_clip


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_clip("tiny"), get_tokenizer("tiny")


def test_default_init_unit_rows_and_registry():
    torch.manual_seed(0)
    for kind in ("cosine", "l2"):
        h = build_head(kind, 16, 5)
        assert h.weight.shape == (5, 16)
        assert torch.allclose(h.weight.norm(dim=1), torch.ones(5), atol=1e-6)
    assert set(HEADS) == {"cosine", "linear", "l2", "layernorm"}
    with pytest.raises(ConfigError, match="cosine, l2, layernorm, linear"):
        build_head("groupnorm", 16, 5)
    with pytest.raises(ConfigError, match="num_classes"):
        build_head("cosine", 16, 0)
    with pytest.raises(ConfigError, match="scale"):
        CosineHead(16, 5, scale=-1.0)


def test_cosine_head_scale_and_norm_invariance():
    torch.manual_seed(0)
    h = CosineHead(8, 3, scale=25.0)
    x = torch.randn(4, 8)
    z = h(x)
    expected = 25.0 * F.normalize(x, dim=1) @ F.normalize(h.weight, dim=1).T
    assert torch.allclose(z, expected, atol=1e-5)
    assert z.abs().max() <= 25.0 + 1e-4
    assert torch.allclose(h(x * 37.0), z, atol=1e-5)  # invariant to feature norm
    h.set_weight(h.weight.detach() * 5.0)  # and to weight norm
    assert torch.allclose(h(x), z, atol=1e-5)
    # a feature equal to a class weight gets exactly the scale
    assert math.isclose(h(h.weight.detach()[1:2])[0, 1].item(), 25.0, rel_tol=1e-5)
    assert not any(n == "bias" for n, _ in h.named_parameters())


def test_l2_and_linear_heads():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    l2 = L2NormHead(8, 3)
    assert torch.allclose(l2(x), x @ F.normalize(l2.weight, dim=1).T, atol=1e-6)
    assert torch.allclose(l2(2 * x), 2 * l2(x), atol=1e-5)  # feature not normalised
    lin = LinearHead(512, 300)
    assert torch.all(lin.bias == 0)
    assert abs(lin.weight.std().item() - math.sqrt(2 / 512)) < 0.003  # kaiming fan_in, gain √2
    w = torch.randn(300, 512)
    lin.set_weight(w)  # inits overwrite W only
    assert torch.equal(lin.weight.data, w) and torch.all(lin.bias == 0)
    assert torch.allclose(lin(x.new_zeros(1, 512) + 1), (w.sum(1))[None], atol=1e-4)


def test_set_weight_in_place_and_shape_error():
    h = CosineHead(8, 3)
    p = h.weight
    h.set_weight(torch.ones(3, 8))
    assert h.weight is p and torch.all(p == 1)
    with pytest.raises(ConfigError, match=r"\(3, 8\)"):
        h.set_weight(torch.ones(8, 3))


def test_semantic_init_matches_independent_computation(tiny):
    model, tok = tiny
    names = ["golden_retriever", "tabby cat", "sea_lion"]
    w = semantic_weights(model, tok, names)
    with torch.no_grad():
        t = model.encode_text(tok(["a photo of a golden retriever.", "a photo of a tabby cat.", "a photo of a sea lion."]))
    expected = F.normalize(F.normalize(t, dim=-1) @ model.visual.proj.T, dim=-1)
    assert w.shape == (3, model.visual.proj.shape[0]) and w.dtype == torch.float32
    assert torch.allclose(w, expected, atol=1e-5)
    # chunking does not change the result; classname prompt uses the bare name
    assert torch.allclose(semantic_weights(model, tok, names, chunk=1), w, atol=1e-5)
    wc = semantic_weights(model, tok, names, prompt="classname")
    with torch.no_grad():
        tc = model.encode_text(tok(["golden retriever", "tabby cat", "sea lion"]))
    assert torch.allclose(wc, F.normalize(F.normalize(tc, dim=-1) @ model.visual.proj.T, dim=-1), atol=1e-5)


def test_semantic_ensemble_averages_without_renormalising(tiny):
    model, tok = tiny
    names = ["dog", "airliner"]
    templates = open_clip.OPENAI_IMAGENET_TEMPLATES
    assert len(templates) == 80
    with torch.no_grad():
        per_t = torch.stack([F.normalize(model.encode_text(tok([t(n) for n in names])), dim=-1) for t in templates])
    mean = per_t.mean(0)
    assert (mean.norm(dim=-1) < 0.999).all()  # the mean of unit vectors is not renormalised ...
    expected = F.normalize(mean @ model.visual.proj.T, dim=-1)
    got = semantic_weights(model, tok, names, prompt="ensemble", chunk=1)
    assert torch.allclose(got, expected, atol=1e-5)
    # ... which the final row normalisation makes harmless; what matters is normalising per template
    # before averaging (averaging raw features weights templates by their norms):
    with torch.no_grad():
        raw = torch.stack([model.encode_text(tok([t(n) for n in names])) for t in templates]).mean(0)
    assert not torch.allclose(F.normalize(raw @ model.visual.proj.T, dim=-1), expected, atol=1e-4)


def test_semantic_descriptions(tiny):
    model, tok = tiny
    desc = {"dog": ["a furry pet", "barks loudly"], "sea_lion": ["a marine mammal"]}
    got = semantic_weights(model, tok, ["dog", "sea_lion"], prompt="descriptions", descriptions=desc)
    with torch.no_grad():
        f = F.normalize(model.encode_text(tok(["a furry pet", "barks loudly", "a marine mammal"])), dim=-1)
    t = torch.stack([f[:2].mean(0), f[2]])
    assert torch.allclose(got, F.normalize(t @ model.visual.proj.T, dim=-1), atol=1e-5)
    with pytest.raises(DataError, match="cat"):
        semantic_weights(model, tok, ["dog", "cat"], prompt="descriptions", descriptions=desc)
    with pytest.raises(ConfigError, match="classname, default, descriptions, ensemble"):
        semantic_weights(model, tok, ["dog"], prompt="fancy")
    with pytest.raises(ConfigError, match="descriptions"):
        semantic_weights(model, tok, ["dog"], prompt="descriptions")


def test_class_mean_uses_unnormalised_features():
    feats = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-2.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 2])
    w = class_mean_weights(feats, labels, 3)
    # class 0: mean (1.5, 0.5) → normalised; normalising first would give (0.5, 0.5) → 45°
    assert torch.allclose(w[0], torch.tensor([1.5, 0.5]) / math.sqrt(2.5), atol=1e-6)
    assert torch.allclose(w[1], torch.tensor([1.0, 1.0]) / math.sqrt(2), atol=1e-6)
    assert torch.allclose(w[2], torch.tensor([-2.0, 5.0]) / math.sqrt(29), atol=1e-6)
    with pytest.raises(DataError, match="tail_bird"):
        class_mean_weights(feats, labels, 4, class_names=["a", "b", "c", "tail_bird"])
    with pytest.raises(DataError, match="0..2"):
        class_mean_weights(feats, torch.tensor([0, 1, 2, 3]), 3)


def test_random_weights_and_init_head_dispatch(tiny):
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    w = random_weights(4, 6, g1)
    assert torch.equal(w, random_weights(4, 6, g2))
    assert torch.allclose(w.norm(dim=1), torch.ones(4), atol=1e-6) and w.abs().max() <= 1
    model, tok = tiny
    head = CosineHead(model.visual.proj.shape[0], 2)
    out = init_head(head, "semantic", clip_model=model, tokenizer=tok, class_names=["dog", "cat"])
    assert torch.equal(head.weight.data, out)
    lin = LinearHead(2, 2)
    init_head(lin, "class_mean", features=torch.tensor([[2.0, 0.0], [0.0, 3.0]]), labels=[0, 1])
    assert torch.allclose(lin.weight, torch.eye(2)) and torch.all(lin.bias == 0)
    init_head(head, "random", generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="class_mean, linear_probe, random, semantic"):
        init_head(head, "k_shot")
    with pytest.raises(DataError, match="3 class names"):
        init_head(head, "semantic", clip_model=model, tokenizer=tok, class_names=["a", "b", "c"])


def test_heads_compute_in_fp32_under_autocast():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    for kind in HEADS:
        h = build_head(kind, 8, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = h(x)
        assert z.dtype == torch.float32 and torch.allclose(z, h(x), atol=1e-6), kind
