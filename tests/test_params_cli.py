"""`lift-dist params` reproduces the papers' parameter counts for ViT-B/16 (random init, no download)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, run_env
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


def test_user_errors_print_one_line_without_traceback():
    for argv, message in (
        (["--model", "ViT-Q-99", "--num-classes", "5"], "unknown model 'ViT-Q-99'"),
        (["--model", "tiny", "--peft", "lorra", "--num-classes", "5"], "unknown lightweight module 'lorra'; valid:"),
        (["--model", "tiny", "--peft", "sparse", "--alpha", "0", "--num-classes", "5"], "alpha must be in (0, 1]"),
        (["--model", "tiny", "--layers", "7", "--num-classes", "5"], "layer index 7 is out of range; valid block indices are 0..3"),
    ):
        p = subprocess.run([sys.executable, "-m", "lift_dist", "params", *argv], capture_output=True, text=True,
                           cwd=REPO, env=run_env(), timeout=120)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("peft, expected", [("bitfit", 101_376), ("vpt-shallow", 7_680), ("vpt-deep", 92_160),
                                            ("adapter", 617_856), ("full", 85_054_464)])
def test_every_vit_b16_count_in_the_method_page(capsys, peft, expected):
    assert report(capsys, "--model", "ViT-B-16", "--peft", peft, "--num-classes", "1000")["peft"] == expected
