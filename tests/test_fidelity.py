"""Recipe-level fidelity to the official codes (shijxcs/LIFT, shijxcs/LIFT-plus). Every expected value
below is worked out by hand from the official formulas (in the comments), not taken from our output."""

from __future__ import annotations

import argparse
import copy
import itertools
import math

import numpy as np
import pytest
import torch
from support.runs import run_in_process

from lift_dist.config import DataConfig, ModelConfig, OptimConfig, RunConfig, load_config
from lift_dist.data.manifest import group_of, read_manifest
from lift_dist.data.pipeline import FixedEpoch, ShardPlan, ShardStream, loader_batches, make_loader
from lift_dist.engine.evaluate import evaluate, logits_in, precisions, transform_for
from lift_dist.engine.optimizer import build_optimizer
from lift_dist.engine.preflight import group_counts
from lift_dist.head_init import linear_probe_weights
from lift_dist.heads import build_head
from lift_dist.model.lift_model import build_model
from lift_dist.params import model_config, parameter_report
from lift_dist.peft.sparse import default_alpha
from lift_dist.transforms import tte_transform

B16 = {"layers": 12, "width": 768}


def report(*argv: str) -> dict:
    p = argparse.ArgumentParser()
    from lift_dist.commands.params import add_arguments

    add_arguments(p)
    args = p.parse_args(list(argv))
    return parameter_report(model_config(args), args.num_classes)


def groups(rep: dict) -> dict[str, dict]:
    return {g["group"]: g for g in rep["groups"]}


# ---- 1. LIFT+ sizes and initialises every module as LIFT+ does -----------------------------------

def test_lift_plus_sparse_is_aft_per_tensor_masks_and_ratio():
    # ratio = C / (L·(12D + 9)) = 1000 / (12 · 9225) = 0.0090334..., not rounded; per tensor int(numel·ratio):
    # attn in W 3D·D = 1,769,472 -> 15,984, b 3D = 2,304 -> 20 (16,004); out W D² = 589,824 -> 5,328, b 768 -> 6
    # (5,334); mlp in W 4D·D = 2,359,296 -> 21,312, b 3,072 -> 27 (21,339); mlp out W -> 21,312, b 768 -> 6 (21,318).
    rep = report("--model", "ViT-B-16", "--peft", "sparse", "--recipe", "lift_plus", "--num-classes", "1000")
    g = groups(rep)
    per_layer = {site: g[f"sparse.{site}.weight_values"]["per_block"] + g[f"sparse.{site}.bias_values"]["per_block"]
                 for site in ("attn_in", "attn_out", "mlp_in", "mlp_out")}
    assert per_layer == {"attn_in": 16_004, "attn_out": 5_334, "mlp_in": 21_339, "mlp_out": 21_318}
    assert all(g[k]["blocks"] == 12 for k in g if k.startswith("sparse"))
    assert rep["alpha"] == pytest.approx(1000 / (12 * (12 * 768 + 9)), rel=1e-12)


def test_lift_plus_masks_come_from_a_fresh_generator_per_tensor():
    cfg = model_config(argparse.Namespace(recipe="lift_plus", model="tiny", peft="sparse", r=None, alpha=0.05, layers=None,
                                          head=None, num_classes=10))
    model, _ = build_model(cfg, 10)
    blocks = model.encoder.blocks
    for site in ("attn_in", "mlp_in"):
        w = blocks[0].weights[site]
        n = w.weight_mask.numel()
        expected = torch.zeros(n, dtype=torch.bool)
        expected[torch.randperm(n, generator=torch.Generator().manual_seed(0))[: int(n * 0.05)]] = True  # LIFT+ generate_mask
        assert torch.equal(w.weight_mask.flatten(), expected)
        assert torch.equal(blocks[1].weights[site].weight_mask, w.weight_mask)  # the same mask in every block (LIFT+ HEAD)
    # LIFT's own masks: one generator over the blocks in order, weight and bias joint: they differ per block.
    lift, _ = build_model(load_config(None, None, ["model.name=tiny", "model.peft=[sparse]", "model.alpha=0.05"]).model, 10)
    assert not torch.equal(lift.encoder.blocks[0].weights["attn_in"].mask, lift.encoder.blocks[1].weights["attn_in"].mask)


def test_lift_plus_prompt_length_and_normal_init():
    # length = 2^floor(log2(C / L)) over the selected blocks: ImageNet-LT 1000 / 12 = 83.3 -> 64; Places-LT
    # 365 / 12 = 30.4 -> 16; iNat 8142 / 12 = 678.5 -> 512; CIFAR 100 / 12 = 8.3 -> 8. LIFT: always 10.
    for classes, length in ((1000, 64), (365, 16), (8142, 512), (100, 8)):
        rep = report("--model", "ViT-B-16", "--peft", "vpt-deep", "--recipe", "lift_plus", "--num-classes", str(classes))
        assert rep["length"] == length and groups(rep)["prompt.tokens"]["per_block"] == length * 768
    assert report("--model", "ViT-B-16", "--peft", "vpt-deep", "--recipe", "lift", "--num-classes", "1000")["length"] == 10
    # Shallow: one selected block, so 2^floor(log2(1000)) = 512.
    assert report("--model", "ViT-B-16", "--peft", "vpt-shallow", "--recipe", "lift_plus", "--num-classes", "1000")["length"] == 512
    torch.manual_seed(0)
    cfg = model_config(argparse.Namespace(recipe="lift_plus", model="ViT-B-16", peft="vpt-deep", r=None, alpha=None, layers=None,
                                          head=None, num_classes=1000))
    tokens = torch.cat([b.sites["prompt"].tokens.detach().flatten() for b in build_model(cfg, 1000)[0].encoder.blocks])
    assert abs(tokens.mean()) < 1e-3 and tokens.std().item() == pytest.approx(0.02, rel=0.02)  # N(0, 0.02²)
    assert tokens.abs().max() > math.sqrt(6 / (3 * 16 * 16 + 768))  # not LIFT's uniform(±0.0625)


@pytest.mark.parametrize("method", ["adaptformer", "adapter"])
def test_lift_plus_down_projection_is_kaiming_uniform(method):
    # kaiming_uniform(a=√5) on a (r, D) weight: U(±1/√D); LIFT's kaiming_normal(a=√5): N(0, 1/(3D)), the same std.
    bound = 1 / math.sqrt(768)
    for recipe, uniform in (("lift_plus", True), ("lift", False)):
        cfg = model_config(argparse.Namespace(recipe=recipe, model="ViT-B-16", peft=method, r=None, alpha=None, layers=None,
                                              head=None, num_classes=1000))
        torch.manual_seed(0)
        site = "adaptformer" if method == "adaptformer" else "adapter"
        w = torch.cat([b.sites[site].down.weight.detach().flatten() for b in build_model(cfg, 1000)[0].encoder.blocks])
        assert w.std().item() == pytest.approx(1 / math.sqrt(3 * 768), rel=0.02)
        assert (w.abs().max().item() <= bound) == uniform


def test_lora_keeps_c_over_4l_under_lift_plus():
    # LIFT+ LoRA r = 2^floor(log2(1000 / (4·12))) = 2^4 = 16; LIFT 2^floor(log2(1000 / 24)) = 32.
    assert report("--model", "ViT-B-16", "--peft", "lora", "--recipe", "lift_plus", "--num-classes", "1000")["r"] == 16
    assert report("--model", "ViT-B-16", "--peft", "lora", "--recipe", "lift", "--num-classes", "1000")["r"] == 32


# ---- 2. r with partial / last-k, sparse ratio rounding ---------------------------------------------

def test_r_divides_by_all_blocks_under_lift_and_by_the_selected_ones_under_lift_plus():
    # last:3 of ViT-B/16, C = 1000. LIFT: 1000 / (2·12) = 41.7 -> 32. LIFT+: 1000 / (2·3) = 166.7 -> 128.
    lift = report("--model", "ViT-B-16", "--peft", "adaptformer", "--recipe", "lift", "--layers", "last:3", "--num-classes", "1000")
    plus = report("--model", "ViT-B-16", "--peft", "adaptformer", "--recipe", "lift_plus", "--layers", "last:3",
                  "--num-classes", "1000")
    assert (lift["r"], plus["r"]) == (32, 128)
    # Per block 2Dr + r + 3D + 1: LIFT 3 × (2·768·32 + 32 + 2304 + 1) = 154,467.
    assert lift["peft"] == 3 * (2 * 768 * 32 + 32 + 3 * 768 + 1)


def test_lift_sparse_ratio_is_floored_with_lifts_own_float_arithmetic():
    # C / (12·L·D) with L all blocks. ImageNet-LT: 1000 / 110,592 = 0.00904 -> 0.009. C = 13,824 gives exactly
    # 0.125, and LIFT's `0.125 // 0.001 * 0.001` is 124 steps (0.125 / 0.001 = 124.99999999999999): 0.124.
    assert default_alpha(1000, 12, 768) == pytest.approx(0.009, abs=1e-15)
    assert default_alpha(13_824, 12, 768) == pytest.approx(0.124, abs=1e-15)
    assert default_alpha(10, 12, 768) == 0.001  # at least 0.001
    # LIFT's mask covers the selected blocks but its ratio divides by all of them.
    lift = report("--model", "ViT-B-16", "--peft", "sparse", "--recipe", "lift", "--layers", "last:3", "--num-classes", "1000")
    assert lift["alpha"] == pytest.approx(0.009, abs=1e-15)


# ---- 3. CIFAR-100-LT groups -------------------------------------------------------------------------

def test_cifar_ir10_groups_by_the_ir100_counts_under_lift():
    # n_c = int(500 · ρ^(-c/99)). IR100: 35 classes above 100, 35 in 20..100, 30 below 20. IR10 (own): 69 / 31 / 0.
    ir100 = [int(500 * 0.01 ** (c / 99)) for c in range(100)]
    ir10 = [int(500 * 0.1 ** (c / 99)) for c in range(100)]
    count = lambda cs: [sum(group_of(c) == g for c in cs) for g in ("head", "medium", "tail")]
    assert count(ir100) == [35, 35, 30] and count(ir10) == [69, 31, 0]

    class Train:
        num_classes = 100
        train_counts = np.asarray(ir10)

    lift = load_config("cifar100_ir10/lift", None, [])
    plus = load_config("cifar100_ir10/lift_plus", None, [])
    assert (lift.metrics.groups_from, plus.metrics.groups_from) == ("cifar100_ir100", "own")
    assert list(group_counts(lift, Train)) == ir100 and list(group_counts(plus, Train)) == ir10
    assert load_config("cifar100_ir100/lift", None, []).metrics.groups_from == "own"


# ---- 4. LIFT's ablation options -----------------------------------------------------------------

def test_randaug_tte_takes_independent_random_views():
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    tf = tte_transform(64, mode="randaug", views=5, interpolation="bilinear")
    torch.manual_seed(0)
    a = tf(img)
    torch.manual_seed(0)
    b = tf(img)
    assert a.shape == (5, 3, 64, 64) and torch.equal(a, b)
    assert len({tuple(v.flatten()[:50].tolist()) for v in a}) == 5  # independent views
    assert load_config(None, None, ["data.tte_mode=randaug", "data.tte_views=10"]).data.tte_views == 10


def test_layernorm_head():
    # <LN(x) without affine (eps 1e-12), w/|w|>: LIFT's LayerNormedClassifier; no scale, no bias.
    head = build_head("layernorm", 16, 3)
    x = torch.randn(4, 16)
    ln = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-12)
    w = head.weight / head.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), ln @ w.T, atol=1e-5, rtol=1e-5)
    cfg = load_config(None, None, ["model.head=LayerNormedClassifier", "model.peft=[layernorm]"])
    assert (cfg.model.head, cfg.model.peft) == ("layernorm", ["ln"])  # the papers' names are accepted


def test_linear_probe_init_is_balanced_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [40, 10, 5, 3])
    feats = rng.normal(size=(len(labels), 8)) + labels[:, None]
    w = linear_probe_weights(torch.tensor(feats), torch.tensor(labels), 4)
    ref = LogisticRegression(solver="lbfgs", max_iter=100, class_weight="balanced").fit(feats, labels).coef_
    torch.testing.assert_close(w, torch.nn.functional.normalize(torch.tensor(ref, dtype=torch.float32), dim=1), atol=1e-5, rtol=1e-4)
    cfg = load_config(None, None, ["model.head_init=linear_probing"])
    assert cfg.model.head_init == "linear_probe"
    lift, plus = load_config("places_lt/lift", None, []).model, load_config("places_lt/lift_plus", None, []).model
    assert (lift.head_init_images, lift.head_init_features) == (0, "frozen")  # LIFT: every image, the frozen backbone
    assert (plus.head_init_images, plus.head_init_features) == (100, "with_modules")  # LIFT+: 100 per class, modules on


def test_descriptor_prompts_look_up_the_spaced_class_name():
    from lift_dist.head_init import semantic_weights
    from lift_dist.model.backbone import get_tokenizer, load_clip

    torch.manual_seed(0)
    clip = load_clip("tiny")
    tok = get_tokenizer("tiny")
    desc = {"sea lion": ["a marine mammal"], "sea_lion": ["something else"], "dog": ["a pet"]}
    w = semantic_weights(clip, tok, ["sea_lion", "dog"], prompt="descriptions", descriptions=desc)
    ref = semantic_weights(clip, tok, ["sea_lion", "dog"], prompt="descriptions", descriptions={"sea lion": ["a marine mammal"],
                                                                                                "dog": ["a pet"]})
    torch.testing.assert_close(w, ref)  # LIFT turns '_' into ' ' before the look-up
    assert load_config(None, None, ["model.prompt=descriptor", "model.descriptions=/d.json"]).model.prompt == "descriptions"


# ---- 5. precision ---------------------------------------------------------------------------------

def test_fp16_amp_setting():
    assert load_config(None, None, ["precision=fp16"]).precision == "fp16"
    from lift_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="precision=fp16 scales the loss with DeepSpeed's gradient scaler, which runs with "
                                          "optim.zero_stage=0 only"):
        load_config(None, None, ["precision=fp16", "optim.zero_stage=1"])


def test_lift_plus_evaluates_in_fp16_and_lift_as_it_trained():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert load_config("places_lt/lift_plus", None, []).eval_precision == "fp16"  # LIFT+'s prec_test="fp16"
    assert load_config("places_lt/lift", None, []).eval_precision == "auto"
    assert precisions(RunConfig(), cpu) == ("fp32", "fp32") and precisions(RunConfig(), gpu) == ("bf16", "bf16")
    assert precisions(RunConfig(precision="fp16"), gpu) == ("fp16", "fp32")  # LIFT's AMP runs test in fp32
    assert precisions(RunConfig(eval_precision="fp16"), cpu) == ("fp32", "fp16")
    from lift_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="eval_precision"):
        load_config(None, None, ["eval_precision=fp8"])


def _trained_tiny(peft: str, num_classes: int = 10):
    """A tiny model whose modules and head are away from their initial values, in eval mode."""
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(name="tiny", pretrained=None, peft=[peft], head_init="random"), num_classes)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("peft", ["adaptformer", "lora", "adapter", "vpt-deep", "ssf", "bitfit", "sparse", "full"])
def test_fp16_evaluation_is_the_half_models_and_leaves_the_training_weights_as_they_were(peft):
    """eval_precision=fp16 computes, bit for bit, what this model gives after `model.half()` (LIFT+'s test),
    its logits rounded to fp16; every parameter and buffer stays the same object with the same value."""
    model = _trained_tiny(peft)
    x = torch.randn(3, 3, model.encoder.image_size, model.encoder.image_size)
    tensors = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    before = {n: t.detach().clone() for n, t in tensors.items()}
    assert any(not torch.equal(t, t.half().float()) for t in before.values() if t.is_floating_point())  # a round trip would show
    with torch.no_grad():
        reference = copy.deepcopy(model).half()(x.half()).half()
        out = logits_in(model, "fp16")(x)
    assert out.dtype == torch.float16 and torch.equal(out, reference)
    after = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    for n, t in tensors.items():
        assert after[n] is t and t.dtype == before[n].dtype and torch.equal(t, before[n]), n


class _NearTie(torch.nn.Module):
    """Logit 1 for class 0 and 1 + offset for class 1, the offset in fp16 steps at 1 (2^-10) taken from
    `offsets` by the row's place among five consecutive rows (five crops of one image under TTE)."""

    def __init__(self, offsets):
        super().__init__()
        self.offsets = offsets

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 1.0
        logits[:, 1] = 1.0 + 2.0**-10 * torch.tensor(self.offsets)[torch.arange(len(x)) % 5]
        return logits


@pytest.mark.parametrize("tte, offsets, fp16_class", [
    (False, [0.25] * 5, 0),                 # fp16 cannot tell 1 + 2^-12 from 1: argmax takes the first, class 0
    (True, [1, 0, 0, 0, 0], 0),             # the crops' mean 1 + 0.2 steps is rounded to 1: a tie again
    (True, [0.55, 0.55, 0.55, 0, 0], 1),    # each crop is rounded first (up, to 1 step): mean 0.6 steps, rounded up
], ids=["image", "crop-mean", "crops-then-mean"])
def test_fp16_evaluation_breaks_ties_as_lift_plus_fp16_logits_do(demo_shards, tte, offsets, fp16_class):
    """LIFT+'s model gives fp16 logits and averages the crops' in fp16; its argmax follows. In fp32 the
    larger logit, class 1's, wins. Every test image gets the same prediction."""
    d = DataConfig(tte=tte, tte_expand=8, workers=0)
    train, test = read_manifest(demo_shards, "train"), read_manifest(demo_shards, "test")
    for precision, predicted in (("fp16", fp16_class), ("fp32", 1)):
        m = evaluate(_NearTie(offsets), test, train.train_counts, d, resolution=32, tte=tte, workers=0, precision=precision)
        assert m["per_class_correct"][predicted] == m["num_samples"] / 10 and m["num_samples"] == 60, precision
        assert {p for _, p in m["confusions"]} == {predicted}, precision


def test_fp16_evaluation_over_shards_counts_the_half_models_predictions(demo_shards):
    """evaluate(precision=fp16) with test-time ensembling: the model runs in fp16 and its per-class
    counts and confusions are those of the half model with LIFT+'s fp16 average of the crops' logits."""
    model = _trained_tiny("adaptformer")
    d, res = DataConfig(tte=True, tte_expand=8, workers=0), model.encoder.image_size
    train, test = read_manifest(demo_shards, "train"), read_manifest(demo_shards, "test")
    seen = []
    hook = model.encoder.register_forward_pre_hook(lambda m, a: seen.append((a[0].dtype, m.blocks[0].block.ln_1.weight.dtype)))
    got = evaluate(model, test, train.train_counts, d, resolution=res, tte=True, workers=0, precision="fp16")
    hook.remove()
    assert seen and set(seen) == {(torch.float16, torch.float16)} and model.head.weight.dtype == torch.float32
    half, correct, confusions = copy.deepcopy(model).half(), torch.zeros(10), {}
    stream = ShardStream(test, ShardPlan(len(test.shard_files), test.shard_samples, seed=0, world=1), 0, FixedEpoch(),
                         transform_for(d, res, tte=True), train=False, num_classes=10)
    with torch.no_grad():
        for crops, labels, _ in loader_batches(make_loader(stream, 0), 16):
            logits = half(crops.flatten(0, 1).half()).half().unflatten(0, crops.shape[:2])  # fp16 logits, as LIFT+'s
            preds = logits.mean(dim=1).argmax(dim=1)  # an fp16 mean, as LIFT+'s torch.stack(...).mean(0)
            for t, p in zip(labels.tolist(), preds.tolist()):
                correct[t] += t == p
                if t != p:
                    confusions[(t, p)] = confusions.get((t, p), 0) + 1
    assert got["confusions"] == confusions and len(confusions) > 0
    np.testing.assert_array_equal(np.asarray(got["per_class_correct"]), correct.numpy())


# ---- 7. the params command -----------------------------------------------------------------------

def test_params_prints_every_tensor_group():
    p = run_in_process("params", "--model", "ViT-B-16", "--peft", "adaptformer", "--num-classes", "1000")
    assert p.returncode == 0, p.stderr
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines() if line.startswith(("adaptformer.", "head."))}
    # Per block (r = 32): LN 768 + 768, down 768·32 + 32, up 32·768 + 768, scale 1; 12 blocks.
    assert rows["adaptformer.down.weight"] == ["12", "24,576", "294,912"]
    assert rows["adaptformer.up.bias"] == ["12", "768", "9,216"]
    assert rows["adaptformer.scale"] == ["12", "1", "12"]
    assert rows["head.weight"] == ["-", "-", "768,000"]


# ---- 6. exact inputs ----------------------------------------------------------------------------------

def test_no_resize_shards_with_full_resolution_decoding_give_the_official_inputs(tmp_path):
    """Shards that keep the original bytes (--no-resize), decoded at full resolution (data.jpeg_draft=false),
    feed the model what the official code feeds it: the original file decoded, then RandomResizedCrop +
    flip with the same random draws, up to the <= 2 grey-level rounding of the vectorised resize."""
    import json

    import webdataset as wds
    from PIL import Image
    from torchvision import transforms as T

    from lift_dist.data.manifest import read_manifest
    from lift_dist.data.pipeline import ShardPlan, ShardStream, _stable_seed, decode_sample, make_loader
    from lift_dist.shards import build_image_folder
    from lift_dist.shards.synthetic import photo_jpegs
    from lift_dist.transforms import SharedEpoch, lift_train_transform, uint8_output

    for i, data in enumerate(photo_jpegs(6, 640, 480, seed=3)):
        (tmp_path / "img" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "img" / f"c{i % 2}" / f"{i}.jpg").write_bytes(data)
    build_image_folder(tmp_path / "img", tmp_path / "shards", "train", resize=None, shard_size=6, progress=False)
    m = read_manifest(tmp_path / "shards", "train")
    tf = uint8_output(lift_train_transform(224, interpolation="bilinear"))
    official = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()])  # LIFT's train transform
    ours = {}
    for sample in wds.WebDataset(str(m.shard_files[0]), shardshuffle=False, empty_check=False):
        original = tmp_path / "img" / json.loads(sample["json"])["file_name"]
        assert sample["jpg"] == original.read_bytes()  # --no-resize: the bytes as they were
        seed = _stable_seed("aug", 0, 0, sample["__key__"], 0)  # the training stream's per-sample seed
        torch.manual_seed(seed)
        ours[sample["__key__"]] = tf(decode_sample(sample, 2, min_side=None, as_tensor=True)[0])
        torch.manual_seed(seed)
        ref = official(Image.open(original).convert("RGB"))
        diff = (ours[sample["__key__"]].int() - ref.int()).abs()
        assert diff.max() <= 2 and diff.float().mean() < 0.3, (original, diff.max())
    # ... and that is what the stream yields (jpeg_draft=false: no reduced-scale decoding).
    stream = ShardStream(m, ShardPlan(1, m.shard_samples, 0, 1), 0, SharedEpoch(0), tf, train=True, num_classes=2,
                         shuffle_buffer=0, seed=0, decode_min_side=None, decode_to_tensor=True)
    streamed = {k: img for x, _, keys in make_loader(stream, 0) for img, k in zip(x, keys)}
    assert streamed.keys() == ours.keys() and all(torch.equal(streamed[k], ours[k]) for k in ours)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_optimizer_runs_multi_tensor_kernels_and_gives_the_loops_values_bit_for_bit(name):
    """The official codes' SGD / AdamW is torch's per-tensor loop on CPU (foreach on GPU); ours runs
    the multi-tensor (foreach) kernels and must land on the same bits, weight decay and momentum included."""
    g = torch.Generator().manual_seed(0)
    shapes = [(100, 64), (1,), (64,), (7, 3)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(12)]
    cfg = OptimConfig(optimizer=name, lr=0.05, weight_decay=5e-4)

    def train(make):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make(params)
        for step in grads:
            for p, gr in zip(params, step):
                p.grad = gr.clone()
            opt.step()
        return opt, params

    ours, got = train(lambda ps: build_optimizer(cfg, ps))
    loop_cls = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]
    kw = {"momentum": cfg.momentum} if name == "sgd" else {"betas": cfg.betas}
    _, want = train(lambda ps: loop_cls(ps, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False, **kw))
    group = ours.param_groups[0]
    assert group["foreach"]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
