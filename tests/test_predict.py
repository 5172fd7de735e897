"""lift-dist predict: images and shard splits from a trained run; mismatched checkpoints refused."""

import csv
import io
import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from support.runs import REPO, TINY, latest_weights, run_env, run_in_process, run_torchrun

pytestmark = pytest.mark.slow  # every test here reads a trained run (real training processes)


def predict(*args):
    """Single-process prediction in this process (torchrun and launch below run it as processes)."""
    return run_in_process("predict", *args)


def test_predict_images_csv_and_json(trained_run, demo_shards):
    names = json.loads((trained_run / "classes.json").read_text())["names"]
    images = sorted((demo_shards.parent / "img" / "test" / names[0]).glob("*.jpg"))[:2]
    p = predict("--run", str(trained_run), *map(str, images), "--top-k", "3", "--tte")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] * 2
    for img in images:
        probs = [float(r["probability"]) for r in rows if r["image"] == str(img)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    assert all(r["class"] == names[int(r["label"])] for r in rows)
    p = predict("--run", str(trained_run), str(images[0]), "--format", "json", "--top-k", "1")
    out = json.loads(p.stdout)
    assert out[0]["image"] == str(images[0]) and len(out[0]["predictions"]) == 1


def test_predict_shards_matches_the_runs_own_evaluation(trained_run, demo_shards, tmp_path):
    out = tmp_path / "preds.parquet"
    p = predict("--run", str(trained_run), "--shards", str(demo_shards), "--split", "test", "--out", str(out))
    assert p.returncode == 0, p.stderr
    t = pq.read_table(out).to_pydict()
    assert len(t["key"]) == 60 and len(set(t["key"])) == 60
    acc = sum(a == b for a, b in zip(t["label"], t["predicted"])) / len(t["label"])
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert abs(acc - metrics["no_tte"]["overall"]) < 1e-9  # same model, same transform, same images


def test_fp16_evaluation_mid_run_leaves_training_as_it_was_and_predict_counts_as_it_did(demo_shards, tmp_path):
    """eval_precision=fp16 (LIFT+'s test) with an evaluation after every epoch of a 2-rank DeepSpeed run:
    training ends bit-identical to the same run evaluated in fp32 (no weight was rounded to fp16 and
    back), and `predict --shards` on the run, which computes in its eval precision, gives its accuracy."""
    args = ["--shards", str(demo_shards), "--epochs", "2", *TINY, "--batch-size", "16", "--set", "optim.lr=0.05",
            "--set", "eval_every_epochs=1", "--set", "data.tte=false"]
    for precision in ("fp32", "fp16"):
        run_torchrun(2, *args, "--out", str(tmp_path / precision), "--set", f"eval_precision={precision}")
    w32, w16 = latest_weights(tmp_path / "fp32"), latest_weights(tmp_path / "fp16")
    assert w32.keys() == w16.keys() and all(torch.equal(w16[k], w32[k]) and w16[k].dtype == torch.float32 for k in w32)
    metrics = json.loads((tmp_path / "fp16" / "metrics.json").read_text())
    assert metrics["eval_precision"] == "fp16" and json.loads((tmp_path / "fp32" / "metrics.json").read_text())["eval_precision"] == "fp32"
    out = tmp_path / "preds.parquet"
    p = predict("--run", str(tmp_path / "fp16"), "--shards", str(demo_shards), "--split", "test", "--out", str(out))
    assert p.returncode == 0, p.stderr
    t = pq.read_table(out).to_pydict()
    assert sum(a == b for a, b in zip(t["label"], t["predicted"])) / len(t["label"]) == metrics["overall"]


def test_mismatched_checkpoints_and_bad_images_are_refused(trained_run, demo_shards, tmp_path):
    # Another module set: a head-only run's checkpoint lacks the AdaptFormer tensors.
    other = tmp_path / "headonly"
    run_torchrun(1, "--shards", str(demo_shards), "--out", str(other), "--epochs", "1", "--model", "tiny", "--device", "cpu",
                 "--workers", "1", "--batch-size", "16", "--set", "model.pretrained=null", "--set", "data.tte=false",
                 "--set", "model.peft=[none]", "--set", "max_steps=1")
    ckpt = other / "checkpoints" / (other / "checkpoints" / "latest").read_text().strip()
    img = next((demo_shards.parent / "img" / "test").rglob("*.jpg"))
    p = predict("--run", str(trained_run), "--checkpoint", str(ckpt), str(img))
    assert p.returncode == 2 and "does not match this model" in p.stderr and "missing" in p.stderr
    # Another class count.
    fewer = tmp_path / "fewer"
    shutil.copytree(trained_run, fewer)
    classes = json.loads((fewer / "classes.json").read_text())
    classes["names"] = classes["names"][:-1]
    (fewer / "classes.json").write_text(json.dumps(classes))
    p = predict("--run", str(fewer), str(img))
    assert p.returncode == 2 and "has a head for 10 classes but run" in p.stderr and "has 9 classes" in p.stderr
    p = predict("--run", str(trained_run), str(tmp_path / "missing.jpg"))
    assert p.returncode == 2 and f"image {tmp_path / 'missing.jpg'} does not exist" in p.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    p = predict("--run", str(trained_run), str(bad))
    assert p.returncode == 2 and f"image {bad} cannot be read" in p.stderr


def test_exif_orientation_applied_and_shard_labels_checked(trained_run, demo_shards, tmp_path):
    from PIL import Image

    names = json.loads((trained_run / "classes.json").read_text())["names"]
    src = sorted((demo_shards.parent / "img" / "test" / names[1]).glob("*.jpg"))[0]
    upright = Image.open(src).convert("RGB").crop((0, 0, 48, 36))  # not square: a rotation would show
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "tagged.png", exif=exif)
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png")
    p = predict("--run", str(trained_run), *(str(tmp_path / n) for n in ("upright.png", "tagged.png", "sideways.png")),
                "--format", "json", "--top-k", "10")
    assert p.returncode == 0, p.stderr
    probs = [{q["label"]: q["probability"] for q in row["predictions"]} for row in json.loads(p.stdout)]
    assert all(abs(probs[0][k] - probs[1][k]) < 1e-6 for k in probs[0])  # the tag is applied
    assert any(abs(probs[0][k] - probs[2][k]) > 1e-4 for k in probs[0])  # and it matters
    # Shards whose labels name other classes than the run's (e.g. another label scheme) are refused.
    renamed = tmp_path / "renamed"
    shutil.copytree(trained_run, renamed)
    classes = json.loads((renamed / "classes.json").read_text())
    classes["names"] = classes["names"][::-1]
    (renamed / "classes.json").write_text(json.dumps(classes))
    p = predict("--run", str(renamed), "--shards", str(demo_shards), "--split", "test", "--out", str(tmp_path / "p.parquet"))
    assert p.returncode == 2 and "labels classes differently from the model" in p.stderr and f"'{names[0]}' there" in p.stderr
    assert not (tmp_path / "p.parquet").exists()


def test_device_is_chosen_and_a_missing_gpu_is_named(trained_run, demo_shards):
    img = next((demo_shards.parent / "img" / "test").rglob("*.jpg"))
    cpu = predict("--run", str(trained_run), str(img), "--device", "cpu", "--format", "json")
    auto = predict("--run", str(trained_run), str(img), "--format", "json")
    assert cpu.returncode == 0 and json.loads(cpu.stdout) == json.loads(auto.stdout)
    if not torch.cuda.is_available():
        p = predict("--run", str(trained_run), str(img), "--device", "cuda")
        assert p.returncode == 2 and "--device cuda was requested but no CUDA GPU is visible" in p.stderr


def test_shard_predictions_are_the_same_rows_on_one_rank_two_ranks_and_through_launch(trained_run, demo_shards, tmp_path):
    common = ["--run-dir", str(trained_run), "--shards", str(demo_shards), "--split", "test", "--top-k", "3", "--batch-size", "16"]
    p = predict(*common, "--out", str(tmp_path / "one.parquet"))
    assert p.returncode == 0, p.stderr
    run_torchrun(2, *common, "--out", str(tmp_path / "two.parquet"), command="predict")
    p = subprocess.run([sys.executable, "-m", "lift_dist", "launch", "--local", "--tasks-per-node", "2", "--wait",
                        "--folder", str(tmp_path / "logs" / "%j"), "--", "predict", *common, "--out", str(tmp_path / "launched.parquet")],
                       capture_output=True, text=True, cwd=REPO, env=run_env(), timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    one = pq.read_table(tmp_path / "one.parquet").to_pydict()
    assert len(one["key"]) == 60 and one["key"] == sorted(one["key"])
    for name in ("two.parquet", "launched.parquet"):
        other = pq.read_table(tmp_path / name).to_pydict()
        assert other.keys() == one.keys()
        for col in ("key", "label", "predicted", "predicted_class", "top_k_labels"):
            assert other[col] == one[col], (name, col)
        for col in ("probability", "top_k_probabilities"):
            a, b = torch.tensor(other[col]), torch.tensor(one[col])
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
