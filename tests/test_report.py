"""`lift-dist report`: HTML + PNGs from real (short) training runs, checked in headless chromium."""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil

import pytest
from support.runs import run_torchrun

from lift_dist import report
from lift_dist.commands import report as report_command
from lift_dist.errors import DataError
from lift_dist.report import format as report_format

pytestmark = pytest.mark.slow  # every test here reads a trained run (real training processes)

TRAIN = ("--epochs", "2", "--model", "tiny", "--device", "cpu", "--workers", "1", "--batch-size", "16",
         "--set", "model.pretrained=null", "--set", "data.tte_expand=8", "--set", "eval_every_epochs=1")


@pytest.fixture(scope="module")
def two_runs(trained_run, demo_shards, tmp_path_factory):
    """The session's AdaptFormer run (2 ranks; the report only reads it) and a head-only run beside it."""
    none = tmp_path_factory.mktemp("report_runs") / "linear"
    run_torchrun(1, "--shards", str(demo_shards), "--out", str(none), *TRAIN, "--set", "model.peft=[none]")
    return trained_run, none


@pytest.fixture(scope="module")
def built(two_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "site"
    p = argparse.ArgumentParser()
    report_command.add_arguments(p)
    assert report.run(p.parse_args([*map(str, two_runs), "--out", str(out)])) == 0
    return out, out / "index.html"


def _cells(table_html: str) -> list[list[str]]:
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", table_html, re.S) if "<td>" in row]


def test_files_and_images(built):
    from PIL import Image

    out, index = built
    page = index.read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"groups.png", "curves.png", "per_class_1.png", "per_class_2.png"} <= set(pngs)
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)" data-file="([^"]+)"', page)
    assert sorted(f for _, f in imgs) == pngs and len(re.findall(r"<img ", page)) == len(pngs)
    for data, name in imgs:  # every plot is inlined (index.html alone is the report) and is that PNG
        assert base64.b64decode(data) == (out / name).read_bytes()
    for name in pngs:
        with Image.open(out / name) as im:
            im.load()
            assert im.format == "PNG" and im.width > 300 and im.height > 200
            assert len(im.convert("L").getcolors(1 << 16) or range(1000)) > 20  # not a blank canvas
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r'(src|href)="(https?:)?//', page) and "http://" not in page and "https://" not in page
    assert not list(out.glob(".*tmp"))  # atomic writes left no temporaries


def test_comparison_table(built, two_runs):
    _, index = built
    page = index.read_text()
    table = page.split('<table class="compare">')[1].split("</table>")[0]
    rows = {r[1]: r for r in _cells(table)}
    assert set(rows) == {"adaptformer", "none"}
    for run_dir in two_runs:
        m = json.loads((run_dir / "metrics.json").read_text())
        row = rows["+".join(m["modules"])]
        assert row[2] == m["model"] == "tiny"
        assert row[3] == f"{m['trainable_params']:,}"
        assert row[4] == str(m["epochs"])
        for col, key in zip(row[7:], report.METRIC_KEYS):
            assert col == report.pct(m[key])
    assert rows["adaptformer"][3] != rows["none"][3]  # the module's parameters show


def test_tail_confusion_table(built, two_runs):
    import pandas as pd

    _, index = built
    page = index.read_text()
    pc = pd.read_parquet(two_runs[0] / "per_class.parquet")
    tails = set(pc.loc[pc["group"] == "tail", "name"])
    names = set(pc["name"])
    tables = re.findall(r'<table class="tail">(.*?)</table>', page, re.S)
    assert len(tables) == 2
    rows = _cells(tables[0])
    assert rows and all(r[0] in tails for r in rows)
    assert int(rows[0][1].replace(",", "")) == int(pc.set_index("name").loc[rows[0][0], "train_count"])
    wrong = [r for r in rows if r[3] != "none"]
    assert wrong and all(r[3] in names and int(r[4]) > 0 for r in wrong)


def test_bad_run_dir(tmp_path, two_runs):
    with pytest.raises(DataError, match="nope"):
        report.write_report([tmp_path / "nope"], tmp_path / "out")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty_run.*metrics\.json"):
        report.write_report([two_runs[0], empty], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # validated before writing anything
    (empty / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="metrics"):
        report.write_report([empty], tmp_path / "out")


def test_values_that_are_no_finite_number_read_as_na():
    assert [report_format.num(v) for v in ("0.5", 0.25, "high", float("inf"), "-inf", [1], True)] == [0.5, 0.25] + [None] * 5
    assert report_format.integer(float("inf")) == "n/a" and report_format.seconds("1e999") == "n/a"
    assert report_format.pct("nan") == "n/a" and report_format.pct(0.5) == "50.00"


def test_missing_groups_and_files_render_na(tmp_path, two_runs):
    # A run reduced to metrics.json with null/NaN groups still renders, with "n/a" and notes.
    run = tmp_path / "bare"
    run.mkdir()
    m = json.loads((two_runs[0] / "metrics.json").read_text())
    m.update(head=None, tail=float("nan"), with_tte=False)
    m.pop("tte", None)
    m["no_tte"] = {**m["no_tte"], "head": None}
    (run / "metrics.json").write_text(json.dumps(m, allow_nan=True))
    index = report.write_report([run], tmp_path / "out")
    page = index.read_text()
    assert "n/a" in page and "no history.jsonl" in page and "no per_class.parquet" in page
    assert (tmp_path / "out" / "groups.png").is_file()


@pytest.mark.browser
def test_page_in_headless_chromium(built, tmp_path):
    from PIL import Image, ImageStat
    from support import browser

    path, reason = browser.find_browser()
    if path is None:
        pytest.skip(f"no browser: {reason}")
    out, index = built
    url = index.resolve().as_uri()

    shot = tmp_path / "shot.png"
    proc = browser.screenshot(path, url, shot)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert not browser.console_errors(proc.stderr), browser.console_errors(proc.stderr)
    with Image.open(shot) as im:
        stat = ImageStat.Stat(im.convert("L"))
        assert im.size == (1400, 3000) and stat.var[0] > 100  # rendered content, not a blank page
    shutil.copy(shot, out / ".." / "screenshot.png")  # kept next to the site for a manual look

    dom = browser.dump_dom(path, url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not browser.console_errors(dom.stderr), browser.console_errors(dom.stderr)
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    n_img = len(re.findall(r'<img src="([^"]+)"', index.read_text()))
    assert f'data-images-total="{n_img}"' in body and 'data-images-loaded="true"' in body, body
    assert "data-console-errors" not in re.search(r"<html[^>]*>", dom.stdout).group(0)
    assert len(re.findall(r"<img ", dom.stdout)) == n_img
