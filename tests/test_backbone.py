"""open_clip backbone loading: activations of OpenAI weights, and bad weights files named in the error."""

import os
import pickle
import sys
import types
import zipfile

import open_clip
import pytest
import torch
from support.crafted import WritesOnLoad
from support.runs import run_in_process

from lift_dist.config import load_config
from lift_dist.errors import LiftError
from lift_dist.model.backbone import check_weights, is_torchscript_archive, load_clip, register_builtin_configs, tag_kwargs
from lift_dist.model.torchscript import read_torchscript_state


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


def _truncated_checkpoint(path):
    torch.save(open_clip.create_model("tiny").state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("weights, message", [
    ("not-a-checkpoint", "cannot be read as a checkpoint"),
    ("truncated", "cannot be read as a checkpoint"),
    ("opnai", "'opnai' is neither a weights file nor a pretrained tag of tiny"),
])
def test_bad_weights_are_named_before_anything_starts(demo_shards, tmp_path, weights, message):
    """A misspelt tag or a damaged weights file: one line naming it, exit 2, and no run directory --
    refused by the preflight, before the process group and the model exist."""
    register_builtin_configs()
    arg = weights
    if weights != "opnai":
        arg = str(tmp_path / "w.pt")
        if weights == "truncated":
            _truncated_checkpoint(tmp_path / "w.pt")
        else:
            (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    p = run_in_process("train", "--shards", str(demo_shards), "--model", "tiny", "--device", "cpu", "--pretrained", arg,
                       "--out", str(tmp_path / "r"))
    assert p.returncode == 2 and arg in p.stderr and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def torchscript_archive(tmp_path_factory):
    """A CLIP saved as OpenAI ships its weights: a traced TorchScript archive (ViT-B-16.pt of the release)."""
    register_builtin_configs()
    torch.manual_seed(1)
    model = open_clip.create_model("tiny").eval()
    tokens = open_clip.get_tokenizer("tiny")(["a photo of a dog"])
    traced = torch.jit.trace(model, (torch.randn(1, 3, 64, 64), tokens), strict=False, check_trace=False)
    path = tmp_path_factory.mktemp("weights") / "tiny-openai.pt"
    traced.save(str(path))
    return path, model.state_dict()


def test_openai_torchscript_weights_load_as_data(torchscript_archive):
    """torch.load(weights_only=True) refuses TorchScript archives; their tensors are read as data and
    checked against the model."""
    path, expected = torchscript_archive
    assert is_torchscript_archive(path)
    with pytest.raises(Exception, match="TorchScript"):
        torch.load(path, weights_only=True)
    model = load_clip("tiny", str(path))
    assert set(model.state_dict()) == set(expected)
    for k, v in expected.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_torchscript_weights_of_another_architecture_are_named(torchscript_archive):
    path, _ = torchscript_archive
    with pytest.raises(LiftError, match=rf"weights file {path} does not match the model: .* missing"):
        load_clip("ViT-B-32", str(path))


def test_a_relative_weights_path_is_stored_absolute(torchscript_archive, monkeypatch):
    path, _ = torchscript_archive
    monkeypatch.chdir(path.parent)
    cfg = load_config(None, None, ["model.name=tiny", f"model.pretrained={path.name}"])
    assert cfg.model.pretrained == str(path)  # a config.yaml read from elsewhere (predict) still finds it


# ---- TorchScript archives are read as data: nothing in them runs -----------------------------------

def test_a_torchscript_archive_that_runs_code_on_load_runs_none_here(tmp_path):
    target = tmp_path / "written-by-the-archive"
    path = tmp_path / "evil.pt"
    torch.jit.script(WritesOnLoad(str(target))).save(str(path))
    assert is_torchscript_archive(path)
    check_weights("tiny", str(path))  # a well-formed archive: its data reads
    with pytest.raises(LiftError, match=rf"weights file {path} does not match the model: \d+ tensor\(s\) missing"):
        load_clip("tiny", str(path))
    assert not target.exists()  # torch.jit.load would have written it


def test_a_torchscript_archive_naming_other_python_is_refused_by_name(tmp_path, torchscript_archive):
    """data.pkl may only name tensors and the archive's own classes; os.system is named, and never called."""
    src, _ = torchscript_archive
    target = tmp_path / "touched"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {target}",)

    path = tmp_path / "crafted.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, pickle.dumps(Payload(), protocol=2) if item.filename.endswith("/data.pkl") else data)
    for load in (lambda: check_weights("tiny", str(path)), lambda: load_clip("tiny", str(path))):
        with pytest.raises(LiftError, match=r"it names (posix|os)\.system, which is not tensor data"):
            load()
    assert not target.exists()


def test_torchscript_state_equals_jit_loads_and_damage_is_named(tmp_path, torchscript_archive):
    src, _ = torchscript_archive
    ours = read_torchscript_state(src)
    theirs = torch.jit.load(str(src), map_location="cpu").state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert {v.device.type for v in read_torchscript_state(src, load=False).values()} == {"meta"}
    short = tmp_path / "short.pt"  # one tensor's data cut short
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(short, "w") as zout:
        cut = next(n for n in zin.namelist() if "/data/" in n and zin.getinfo(n).file_size > 8)
        for item in zin.infolist():
            zout.writestr(item, zin.read(item)[:4] if item.filename == cut else zin.read(item))
    with pytest.raises(LiftError, match=rf"weights file {short} cannot be read .*{cut} holds 4 bytes"):
        check_weights("tiny", str(short))


def _archive(path, data_pkl: bytes, members: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        for name, data in (members or {}).items():
            z.writestr(f"archive/data/{name}", data)
    return path


def test_crafted_object_graphs_and_tensor_state_are_refused(tmp_path, monkeypatch):
    """One object referenced many times would make the walk exponential (2^N paths from a 1 KB file), and
    BUILD on a tensor calls Tensor.__setstate__ (set_, which resizes a storage past the checked sizes)."""
    module = types.ModuleType("__torch__")  # the archive's class namespace, so that pickle can name M
    monkeypatch.setitem(sys.modules, "__torch__", module)

    class M:
        pass

    M.__module__, M.__qualname__, module.M = "__torch__", "M", M
    root, child = M(), M()
    child.x = 1
    root.a, root.b = child, child
    shared = _archive(tmp_path / "shared.pt", pickle.dumps(root, protocol=2))
    with pytest.raises(ValueError, match=r"its object at b\. is reached twice"):
        read_torchscript_state(shared, load=False)

    def tensor(key: bytes) -> bytes:  # _rebuild_tensor_v2(storage key, 0, (1,), (1,)) as the C++ pickler writes it
        return (b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00" + key
                + b"X\x03\x00\x00\x00cpuK\x01tQK\x00K\x01\x85K\x01\x85tR")
    # {'a': tensor0}, then BUILD on tensor0 with (tensor1, 0, (1000,), (1,)): set_ would grow it to 1000 elements
    resize = (b"\x80\x02c__torch__\nX\n)\x81}X\x01\x00\x00\x00a" + tensor(b"0") + b"(" + tensor(b"1")
              + b"K\x00M\xe8\x03\x85K\x01\x85tbsb.")
    grown = _archive(tmp_path / "grown.pt", resize, {"0": bytes(4), "1": bytes(4)})
    with pytest.raises(pickle.UnpicklingError, match="it sets the state of a Tensor"):
        read_torchscript_state(grown)
