"""lift-dist export: merged modules compute what the unmerged ones did; the three formats give
`lift-dist predict`'s logits; ONNX through onnxruntime; files that are not exports are named."""

import csv
import io
import json
import re

import pytest
import torch
from safetensors.torch import save_file
from support.crafted import WritesOnLoad
from support.runs import run_in_process

from lift_dist.config import ModelConfig
from lift_dist.errors import DataError
from lift_dist.export import EXTRA_FILE, KEPT, Classifier, ExportedModel, exported_model_config, merged, read_metadata
from lift_dist.model.lift_model import build_model


def trained_like(peft: list[str], num_classes: int = 7):
    """A tiny model whose trainable tensors are all moved off their identity init, as after training."""
    model, _ = build_model(ModelConfig(name="tiny", peft=peft, head_init="random"), num_classes)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.mark.parametrize("peft", [["lora", "ssf"], ["sparse"], ["bitfit", "ln"], ["adaptformer", "lora"], ["vpt-deep", "ssf"],
                                  ["adapter"], ["partial"]])
def test_merged_model_computes_the_same_logits_and_rebuilds_from_its_metadata(peft):
    model = trained_like(peft)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        net = merged(model)
        torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)
    cfg = exported_model_config(net)
    assert cfg.peft == ([m for m in peft if m in KEPT] or ["none"])
    # The exported architecture rebuilt without weights takes the merged tensors exactly.
    rebuilt, _ = build_model(cfg, 7)
    state = Classifier(net).state_dict()
    Classifier(rebuilt).load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), ref, atol=1e-5, rtol=1e-5)


def test_lora_and_ssf_leave_no_module_behind():
    net = merged(trained_like(["lora", "ssf"]))
    assert all(not blk.sites and not blk.weights for blk in net.encoder.blocks)
    assert not any(p.requires_grad for p in net.parameters())


def test_a_file_that_is_not_an_export_is_named(tmp_path):
    plain = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(DataError, match=r"weights.safetensors is not a model written by `lift-dist export`"):
        read_metadata(plain)
    with pytest.raises(DataError, match=r"exported model .*missing.onnx does not exist"):
        read_metadata(tmp_path / "missing.onnx")
    for name, data in (("garbage.pt", bytes(range(256)) * 8), ("pickle.safetensors", b"\x80\x04\x95\x05\x00")):
        (tmp_path / name).write_bytes(data)  # the safetensors reader refuses these with its own exception type
        with pytest.raises(DataError, match=rf"{name} is not a model written by `lift-dist export` \(safetensors, TorchScript or ONNX"):
            read_metadata(tmp_path / name)
    scripted = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    with pytest.raises(DataError, match=r"other.pt is not a model written by `lift-dist export`"):
        read_metadata(scripted)


def _valid_meta() -> dict:
    return {"format": "lift-dist-export", "version": 1, "num_classes": 3, "class_names": ["a", "b", "c"],
            "model": ModelConfig(name="tiny", pretrained=None, head_init="random").model_dump(mode="json"),
            "input": {"resolution": 64, "range": [0.0, 1.0]},
            "preprocessing": {"interpolation": "bilinear", "tte": {"mode": "fivecrop", "expand": 8, "views": 1}}}


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("input"), "export metadata input: Field required"),
    (lambda m: m.update(num_classes="ten"), "export metadata num_classes='ten' is not valid"),
    (lambda m: m["model"].update(peft=["nope"]), "export metadata model.peft[0]='nope' is not valid"),
    (lambda m: m.update(class_names=["a"]), "export metadata class_names holds 1 names for num_classes=3"),
    (lambda m: m["preprocessing"]["tte"].update(mode="spin"), "export metadata preprocessing.tte.mode='spin' is not valid"),
    (lambda m: m.update(class_names=[1, 2, 3]), "export metadata class_names[0]=1 is not valid"),
])
def test_export_metadata_is_checked_before_any_model_is_built(tmp_path, edit, message):
    meta = _valid_meta()
    edit(meta)
    f = tmp_path / "export.safetensors"
    save_file({"w": torch.zeros(2)}, str(f), metadata={EXTRA_FILE: json.dumps(meta)})
    with pytest.raises(DataError, match=re.escape(f"{f}: {message}")):
        ExportedModel(f)
    save_file({"w": torch.zeros(2)}, str(f), metadata={EXTRA_FILE: json.dumps(_valid_meta())})
    with pytest.raises(DataError, match="its tensors do not match the architecture in its own metadata"):
        ExportedModel(f)  # the valid metadata passes; only then are the tensors compared


def cli(*args):
    return run_in_process(*args)  # export and single-process predict: no process group, no need of a fresh interpreter


def predicted(p) -> dict:
    assert p.returncode == 0, p.stderr
    return {(r["image"], r["label"]): float(r["probability"]) for r in csv.DictReader(io.StringIO(p.stdout))}


@pytest.mark.slow
def test_every_format_predicts_what_the_run_predicts(trained_run, demo_shards, tmp_path):
    images = [str(p) for p in sorted((demo_shards.parent / "img" / "test").rglob("*.jpg"))[:5]]
    for tte in ([], ["--tte"]):
        want = predicted(cli("predict", "--run", str(trained_run), *images, "--top-k", "10", *tte))
        for fmt, suffix in (("safetensors", ".safetensors"), ("torchscript", ".pt"), ("onnx", ".onnx")):
            out = tmp_path / f"model{suffix}"
            if not out.exists():
                p = cli("export", "--run", str(trained_run), "--format", fmt, "--out", str(out))
                assert p.returncode == 0 and f"wrote {out} ({fmt})" in p.stdout, p.stderr
            got = predicted(cli("predict", "--model", str(out), *images, "--top-k", "10", *tte))
            assert got.keys() == want.keys()
            assert max(abs(got[k] - want[k]) for k in want) <= 1e-4, (fmt, tte)
    # The metadata carries what a server needs.
    fmt, meta = read_metadata(tmp_path / "model.onnx")
    classes = json.loads((trained_run / "classes.json").read_text())["names"]
    assert fmt == "onnx" and meta["class_names"] == classes and meta["input"]["normalised_inside"]
    assert meta["preprocessing"]["center_crop"] == meta["input"]["resolution"]
    # onnxruntime's logits equal the TorchScript module's on any batch size (the batch axis is dynamic).
    x = torch.rand(3, 3, meta["input"]["resolution"], meta["input"]["resolution"])
    onnx_logits = ExportedModel(tmp_path / "model.onnx").logits(x)
    torch.testing.assert_close(onnx_logits, ExportedModel(tmp_path / "model.pt").logits(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(onnx_logits, ExportedModel(tmp_path / "model.safetensors").logits(x), atol=1e-4, rtol=1e-4)


def test_a_torchscript_export_is_read_as_data_and_runs_nothing_of_its_own(tmp_path):
    """predict --model reads a TorchScript export's tensors into the architecture its metadata names:
    an archive whose TorchScript writes a file on load (torch.jit.load runs it) writes nothing here."""
    target = tmp_path / "written-by-the-archive"
    meta = _valid_meta() | {"model": ModelConfig(name="tiny", peft=["adaptformer"], head_init="random").model_dump()}
    path = tmp_path / "crafted-export.pt"
    torch.jit.script(WritesOnLoad(str(target))).save(str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})
    with pytest.raises(DataError, match=r"crafted-export.pt: its tensors do not match the architecture in its own metadata"):
        ExportedModel(path)
    assert not target.exists()
