"""`lift-dist report`: one self-contained HTML page (index.html, plots inlined, no network; the PNGs stay
beside it) for one or more run directories: a comparison table, head / medium / tail accuracy,
learning curves, per-class accuracy against training frequency and the most-confused tail classes.

    reader   a run directory as the report sees it (through lift_dist.run_dir)
    plots    the PNGs
    tables   the tail-confusion rows
    format   how numbers read;  templates/report.html.j2  the page (Jinja2, autoescaped)
"""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from lift_dist.errors import DataError
from lift_dist.report.format import METRIC_KEYS, MODE_LABELS, integer, pct, seconds
from lift_dist.report.plots import plot_curves, plot_groups, plot_per_class
from lift_dist.report.reader import Run, load_run, unique_labels
from lift_dist.report.tables import tail_confusions

__all__ = ["METRIC_KEYS", "Run", "load_run", "pct", "render_html", "run", "tail_confusions", "write_report"]

_ENV = Environment(loader=PackageLoader("lift_dist.report", "templates"), autoescape=select_autoescape(["html", "j2"]),
                   undefined=StrictUndefined, keep_trailing_newline=True)


def _asset(name: str) -> str:
    return _ENV.loader.get_source(_ENV, name)[0]


def render_html(runs: list[Run], images: dict, title: str, top: int, out_dir: Path) -> str:
    def inline(name: str) -> str:  # the plot as a data URI, so index.html alone is the whole report
        return base64.b64encode((out_dir / name).read_bytes()).decode("ascii")

    return _ENV.get_template("report.html.j2").render(
        title=title, runs=runs, images=images, tail_rows=[tail_confusions(r, top) for r in runs], metric_keys=METRIC_KEYS,
        mode_labels=MODE_LABELS, pct=pct, integer=integer, seconds=seconds, inline=inline, css=_asset("report.css"),
        console_errors_js=_asset("console_errors.js"), images_loaded_js=_asset("images_loaded.js"))


def write_report(run_dirs: list[Path], out_dir: Path, title: str = "LIFT run report", top: int = 10) -> Path:
    """Build DIR/index.html plus its PNGs from the given run directories; returns the index path."""
    if not run_dirs:
        raise DataError("no run directory given")
    runs = [load_run(p) for p in run_dirs]  # validate all before writing anything
    unique_labels(runs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {"groups": plot_groups(runs, out_dir, "groups.png"), "curves": plot_curves(runs, out_dir, "curves.png"),
              "per_class": [plot_per_class(r, out_dir, f"per_class_{i + 1}.png") for i, r in enumerate(runs)]}
    page = render_html(runs, images, title, top, out_dir)
    index = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)  # a reader never sees a half-written page
    return index


def run(args: argparse.Namespace) -> int:
    print(f"report: {write_report([Path(r) for r in args.runs], Path(args.out), title=args.title, top=args.top)}")
    return 0
