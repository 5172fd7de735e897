"""`lift-dist params` reproduces the papers' parameter counts for ViT-B/16 (random init, no download)."""

import json

import pytest

from lift_dist.cli import main


def report(capsys, *argv):
    assert main(["params", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("classes, r, peft", [(1000, 32, 617_868), (365, 8, 175_212), (8142, 256, 4_749_324), (100, 4, 101_436)])
def test_adaptformer_counts_match_the_paper(capsys, classes, r, peft):
    rep = report(capsys, "--model", "ViT-B-16", "--peft", "adaptformer", "--num-classes", str(classes))
    assert (rep["peft"], rep["r"], rep["head"]) == (peft, r, 768 * classes)


def test_other_modules_and_overrides(capsys):
    rep = report(capsys, "--model", "ViT-B-16", "--peft", "sparse", "--alpha", "0.01", "--num-classes", "1000")
    assert (rep["peft"], rep["alpha"]) == (850_140, 0.01)
    assert report(capsys, "--model", "ViT-B-16", "--peft", "lora", "--num-classes", "1000")["peft"] == 1_179_648
    rep = report(capsys, "--model", "ViT-B-16", "--peft", "adaptformer", "--r", "64", "--layers", "last:6", "--num-classes", "1000")
    assert rep["peft"] == 6 * (2 * 768 * 64 + 64 + 3 * 768 + 1) and rep["per_module"]["adaptformer"]["layers"] == "6-11"


def test_user_errors_print_one_line_without_traceback(capsys):
    for argv, message in (
        (["--model", "ViT-Q-99", "--num-classes", "5"], "model.name='ViT-Q-99' is not valid: unknown model; valid ViT names"),
        (["--model", "tiny", "--peft", "lorra", "--num-classes", "5"], "model.peft[0]='lorra' is not valid: Input should be"),
        (["--model", "tiny", "--peft", "sparse", "--alpha", "0", "--num-classes", "5"],
         "model.alpha=0.0 is not valid: Input should be greater than 0"),
        (["--model", "tiny", "--layers", "7", "--num-classes", "5"], "layer index 7 is out of range; valid block indices are 0..3"),
    ):
        assert main(["params", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("lift-dist params: error: ") and message in err, err


@pytest.mark.parametrize("peft, expected", [("bitfit", 101_376), ("vpt-shallow", 7_680), ("vpt-deep", 92_160),
                                            ("adapter", 617_856), ("full", 85_054_464)])
def test_every_vit_b16_count_in_the_method_page(capsys, peft, expected):
    assert report(capsys, "--model", "ViT-B-16", "--peft", peft, "--num-classes", "1000")["peft"] == expected


def test_lift_plus_recipe_sizes_lora_with_c_over_4l_only_when_lora_is_chosen():
    """LIFT+ (lift-plus-reference §3.2): LoRA r = 2^floor(log2(C / 4L)), AdaptFormer keeps C / 2L."""
    from lift_dist.config import load_config
    from lift_dist.model.lift_model import build_model

    def built(preset, *overrides):
        cfg = load_config(preset, None, ["model.pretrained=null", "model.head_init=random", *overrides])
        return build_model(cfg.model, 1000)[0]

    plus = built("imagenet_lt/lift_plus", "model.peft=[lora]")
    assert plus.peft_info["lora"]["r"] == 16 and plus.parameter_report()["peft"] == 12 * 2 * 2 * 768 * 16
    assert built("imagenet_lt/lift", "model.peft=[lora]").peft_info["lora"]["r"] == 32
    assert built("imagenet_lt/lift_plus").peft_info["adaptformer"]["r"] == 32  # the default module is unaffected
    assert built("imagenet_lt/lift_plus", "model.peft=[lora]", "model.peft_options={lora: {divisor: 8}}").peft_info["lora"]["r"] == 8
    assert built("imagenet_lt/lift_plus", "model.peft=[lora]", "model.r=4").peft_info["lora"]["r"] == 4  # an explicit r wins

    from lift_dist.errors import ConfigError
    from lift_dist.peft import make_configs

    with pytest.raises(ConfigError, match="unknown lightweight module 'lorra'"):
        make_configs(["adaptformer"], defaults={"lorra": {"divisor": 4}})
    with pytest.raises(ConfigError, match="lora has no option 'dvisor'"):
        make_configs(["lora"], defaults={"lora": {"dvisor": 4}})
