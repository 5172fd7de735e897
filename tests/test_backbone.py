"""open_clip backbone loading: activations of OpenAI weights, and bad weights files named in the error."""

import subprocess
import sys

import open_clip
import pytest

from conftest import REPO, run_env
from lift_dist.errors import LiftError
from lift_dist.model.backbone import load_clip, tag_kwargs


def test_openai_tag_forces_quickgelu_on_plain_configs():
    # open_clip only warns for ViT-B-16 + 'openai' and keeps exact GELU; the tag's setting must win.
    assert tag_kwargs("ViT-B-16", "openai") == {"force_quick_gelu": True}
    assert tag_kwargs("ViT-B-16", "laion2b_s34b_b88k") == {}
    model = open_clip.create_model("ViT-B-16", **tag_kwargs("ViT-B-16", "openai"))  # random init: no download
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert type(open_clip.create_model("ViT-B-16").visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"


@pytest.mark.parametrize("name, content", [("missing.pt", None), ("corrupt.pt", b"\x80\x02garbage"),
                                           ("corrupt.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")])
def test_bad_weights_file_is_named(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LiftError) as e:
        load_clip("tiny", str(path))
    assert str(path) in str(e.value)
    assert ("does not exist" in str(e.value)) == (content is None)


def test_bad_weights_file_on_the_command_line(demo_shards, tmp_path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"not a checkpoint")
    p = subprocess.run([sys.executable, "-m", "lift_dist.train", "--shards", str(demo_shards), "--model", "tiny", "--device", "cpu",
                        "--pretrained", str(bad), "--out", str(tmp_path / "r")], capture_output=True, text=True,
                       env=run_env(), cwd=REPO, timeout=120)
    assert p.returncode == 2 and str(bad) in p.stderr and "Traceback" not in p.stderr, p.stderr
