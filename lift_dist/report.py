"""`lift-dist report`: a self-contained HTML page (index.html + PNGs, no network) for one or more run directories."""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from lift_dist.errors import DataError

GROUPS = ("head", "medium", "tail")
METRIC_KEYS = ("overall", "mean_class", "head", "medium", "tail")
GROUP_COLORS = {"head": "#4c72b0", "medium": "#dd8452", "tail": "#c44e52"}
MODE_LABELS = {"no_tte": "without TTE", "tte": "with TTE"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `lift-dist train`")
    p.add_argument("--out", required=True, help="output directory: index.html and the PNG plots are written there")
    p.add_argument("--title", default="LIFT run report")
    p.add_argument("--top", type=int, default=10, help="rows in each most-confused tail classes table")


def run(args: argparse.Namespace) -> int:
    index = write_report([Path(r) for r in args.runs], Path(args.out), title=args.title, top=args.top)
    print(f"report: {index}")
    return 0


# ----------------------------------------------------------------------------- loading


@dataclass
class Run:
    path: Path
    label: str
    metrics: dict
    history: list = field(default_factory=list)
    per_class: object = None  # pandas DataFrame or None
    confusions: object = None  # pandas DataFrame or None
    config_text: str = ""
    notes: list = field(default_factory=list)  # what was missing, shown on the page

    @property
    def method(self) -> str:
        mods = self.metrics.get("modules") or []
        return "+".join(str(m) for m in mods) or "n/a"

    @property
    def final_mode(self) -> str:
        return "tte" if self.metrics.get("with_tte") else "no_tte"


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{what} {path} is not readable JSON: {e}") from None


def _read_parquet(path: Path, required: set[str]):
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path} is not a readable parquet file: {e}") from None
    missing = required - set(df.columns)
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
    return df


def load_run(path: Path) -> Run:
    """Read one run directory; only metrics.json is required, the rest is shown when present."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"run directory {path} does not exist or is not a directory")
    mfile = path / "metrics.json"
    if not mfile.is_file():
        raise DataError(f"{path} is not a finished run directory: no metrics.json (training not run or not finished?)")
    metrics = _read_json(mfile, "metrics file")
    if not isinstance(metrics, dict):
        raise DataError(f"metrics file {mfile} does not hold a JSON object")
    r = Run(path=path, label=path.resolve().name, metrics=metrics)

    hfile = path / "history.jsonl"
    if hfile.is_file():
        for i, line in enumerate(hfile.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                r.history.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{hfile} line {i} is not JSON: {e}") from None
        # An epoch logged twice (a resumed run that repeated it) counts once: the later line wins.
        by_epoch = {h.get("epoch", i + 1): h for i, h in enumerate(r.history)}
        r.history = [by_epoch[e] for e in sorted(by_epoch)]
    else:
        r.notes.append("no history.jsonl: learning curves unavailable")

    pfile = path / "per_class.parquet"
    if pfile.is_file():
        r.per_class = _read_parquet(pfile, {"label", "name", "train_count", "group", "accuracy_no_tte"})
    else:
        r.notes.append("no per_class.parquet: per-class plot and tail table unavailable")
    cfile = path / "confusions.parquet"
    if cfile.is_file():
        r.confusions = _read_parquet(cfile, {"mode", "true", "predicted", "count"})
    else:
        r.notes.append("no confusions.parquet: most frequent wrong predictions unavailable")
    yfile = path / "config.yaml"
    if yfile.is_file():
        r.config_text = yfile.read_text(errors="replace")
    return r


def _unique_labels(runs: list[Run]) -> None:
    # Two runs can share a directory name (…/a/run, …/b/run): suffix to keep legends and tables distinct.
    seen: dict[str, int] = {}
    for r in runs:
        n = seen.get(r.label, 0)
        seen[r.label] = n + 1
        if n:
            r.label = f"{r.label} ({n + 1})"


# ----------------------------------------------------------------------------- formatting


def _num(v) -> float | None:
    """A metric as a float, or None for null / NaN / missing (an empty group)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def pct(v) -> str:
    f = _num(v)
    return "n/a" if f is None else f"{100 * f:.2f}"


def _int(v) -> str:
    f = _num(v)
    return "n/a" if f is None else f"{int(f):,}"


def _secs(v) -> str:
    f = _num(v)
    if f is None:
        return "n/a"
    return f"{f:.1f} s" if f < 120 else f"{f / 60:.1f} min"


def _esc(v) -> str:
    return html.escape(str(v))


# ----------------------------------------------------------------------------- plots


def _figure(w: float, h: float, nrows: int = 1, ncols: int = 1):
    # Figure + Agg canvas directly: no pyplot global state, no display backend needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, out_dir: Path, name: str) -> str:
    tmp = out_dir / f".{name}.tmp"
    fig.savefig(tmp, format="png", bbox_inches="tight")
    os.replace(tmp, out_dir / name)
    return name


def plot_per_class(r: Run, out_dir: Path, name: str) -> str | None:
    import numpy as np

    if r.per_class is None or len(r.per_class) == 0:
        return None
    df = r.per_class.sort_values(["train_count", "label"], ascending=[False, True], kind="stable").reset_index(drop=True)
    n = len(df)
    x = np.arange(n)
    fig, axes = _figure(max(7.0, min(18.0, 0.35 * n + 3)), 4.2)
    ax = axes[0][0]
    # Shade contiguous head/medium/tail regions along the frequency-sorted axis.
    groups = list(df["group"])
    start = 0
    for i in range(1, n + 1):
        if i == n or groups[i] != groups[start]:
            g = groups[start]
            ax.axvspan(start - 0.5, i - 0.5, color=GROUP_COLORS.get(g, "#999999"), alpha=0.12, lw=0)
            ax.text((start + i - 1) / 2, 1.07, g, ha="center", va="bottom", fontsize=9, color=GROUP_COLORS.get(g, "#555"))
            start = i
    modes = [m for m in ("no_tte", "tte") if f"accuracy_{m}" in df.columns]
    width = 0.8 / len(modes)
    for j, m in enumerate(modes):
        acc = df[f"accuracy_{m}"].to_numpy(dtype=float)
        xs = x - 0.4 + width * (j + 0.5)
        ax.bar(xs, np.nan_to_num(acc, nan=0.0), width=width, label=f"accuracy {MODE_LABELS[m]}",
               color=("#55a868" if m == "no_tte" else "#8172b2"))
        missing = np.isnan(acc)
        if missing.any():  # a class without eval samples: mark it, don't pretend it scored 0
            ax.scatter(xs[missing], np.full(missing.sum(), 0.02), marker="x", color="black", zorder=3,
                       label="no eval sample" if j == 0 else None)
    ax.set_ylim(0, 1.15)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.5, n - 0.5)
    if n <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels([str(s) for s in df["name"]], rotation=60, ha="right", fontsize=7)
    else:
        ax.set_xlabel("classes, sorted by training count")
    ax2 = ax.twinx()
    ax2.plot(x, df["train_count"].to_numpy(dtype=float), color="black", marker="." if n <= 40 else None, lw=1.2, label="training images")
    ax2.set_yscale("log")
    from matplotlib.ticker import LogFormatter  # plain "60", not "6×10¹"; still thins labels on wide ranges

    ax2.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax2.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax2.set_ylabel("training images (log)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    # Legend outside on the right: inside it would hide the group labels and the bars.
    ax.legend(h1 + h2, l1 + l2, loc="upper left", bbox_to_anchor=(1.12, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"{r.label}: per-class accuracy vs. training frequency", fontsize=10, pad=18)
    return _save(fig, out_dir, name)


def plot_groups(runs: list[Run], out_dir: Path, name: str) -> str:
    """Head/medium/tail accuracy, one bar per (run, mode); all runs overlaid in one chart."""
    import numpy as np

    series = []
    for r in runs:
        for m in ("no_tte", "tte"):
            vals = r.metrics.get(m)
            if m == "no_tte" and not isinstance(vals, dict):
                vals = r.metrics  # older runs: top-level numbers only
            if isinstance(vals, dict):
                series.append((f"{r.label} – {MODE_LABELS[m]}", [_num(vals.get(g)) for g in GROUPS], m))
    fig, axes = _figure(max(6.5, 1.1 * len(series) + 4), 4.0)
    ax = axes[0][0]
    x = np.arange(len(GROUPS))
    width = 0.8 / max(1, len(series))
    cmap = __import__("matplotlib").colormaps["tab20"]
    for j, (label, vals, m) in enumerate(series):
        xs = x - 0.4 + width * (j + 0.5)
        ys = [0.0 if v is None else v for v in vals]
        bars = ax.bar(xs, ys, width=width, label=label, color=cmap(j % 20), hatch=("//" if m == "tte" else None),
                      edgecolor="white")
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, (v or 0) + 0.01, "n/a" if v is None else f"{100 * v:.0f}",
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(GROUPS)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy")
    ax.set_title("head / medium / tail accuracy, with and without test-time ensembling", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    return _save(fig, out_dir, name)


def plot_curves(runs: list[Run], out_dir: Path, name: str) -> str | None:
    """Loss, evaluation accuracy and learning rate per epoch; runs overlaid."""
    if not any(r.history for r in runs):
        return None
    fig, axes = _figure(13, 3.6, 1, 3)
    ax_loss, ax_acc, ax_lr = axes[0]
    cmap = __import__("matplotlib").colormaps["tab10"]
    any_acc = False
    for j, r in enumerate(runs):
        if not r.history:
            continue
        c = cmap(j % 10)
        mk = "os^Dvx*P"[j % 8]  # distinct markers keep near-identical runs visible when overlaid
        ep = [h.get("epoch", i + 1) for i, h in enumerate(r.history)]
        ax_loss.plot(ep, [_num(h.get("loss")) for h in r.history], marker=mk, color=c, label=r.label, alpha=0.85)
        ax_lr.plot(ep, [_num(h.get("lr")) for h in r.history], marker=mk, color=c, label=r.label, alpha=0.85)
        # Intermediate evaluations come from history; the last epoch's no-TTE numbers are in metrics.json.
        pts = {h.get("epoch", i + 1): h["eval"] for i, h in enumerate(r.history) if isinstance(h.get("eval"), dict)}
        final = r.metrics.get("no_tte") if isinstance(r.metrics.get("no_tte"), dict) else None
        if final is not None and ep:
            pts.setdefault(max(ep), final)
        for key, style in (("overall", "-"), ("mean_class", "--")):
            xs = sorted(e for e in pts if _num(pts[e].get(key)) is not None)
            if xs:
                any_acc = True
                ax_acc.plot(xs, [_num(pts[e][key]) for e in xs], style, marker=mk, color=c, alpha=0.85, label=f"{r.label} {key}")
    ax_loss.set_title("training loss", fontsize=10)
    ax_acc.set_title("evaluation accuracy (no TTE)", fontsize=10)
    ax_lr.set_title("learning rate", fontsize=10)
    if not any_acc:
        ax_acc.text(0.5, 0.5, "no evaluation recorded", ha="center", va="center", transform=ax_acc.transAxes)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax_acc.set_ylim(0, 1.05)
    return _save(fig, out_dir, name)


# ----------------------------------------------------------------------------- tables


def tail_confusions(r: Run, top: int = 10) -> list[dict]:
    """The tail classes with the lowest accuracy (final mode), each with its most frequent wrong prediction."""
    import pandas as pd

    if r.per_class is None:
        return []
    df = r.per_class
    mode = r.final_mode if f"accuracy_{r.final_mode}" in df.columns else "no_tte"
    names = dict(zip(df["label"].astype(int), df["name"].astype(str)))
    tail = df[df["group"] == "tail"].copy()
    if tail.empty:
        return []
    tail["acc"] = pd.to_numeric(tail[f"accuracy_{mode}"], errors="coerce")
    # Lowest accuracy first; classes without eval samples (NaN) last; ties: rarer class first.
    tail = tail.sort_values(["acc", "train_count", "label"], na_position="last", kind="stable")
    conf = r.confusions
    if conf is not None and len(conf):
        conf = conf[conf["mode"] == mode]
    rows = []
    for _, c in tail.head(top).iterrows():
        wrong, wrong_n = None, None
        if conf is not None and len(conf):
            mine = conf[conf["true"] == c["label"]]
            if len(mine):
                best = mine.sort_values(["count", "predicted"], ascending=[False, True], kind="stable").iloc[0]
                wrong, wrong_n = names.get(int(best["predicted"]), f"label {int(best['predicted'])}"), int(best["count"])
        rows.append({"name": str(c["name"]), "train_count": int(c["train_count"]), "accuracy": _num(c["acc"]),
                     "eval_count": c.get(f"eval_count_{mode}"), "predicted": wrong, "predicted_count": wrong_n,
                     "mode": mode})
    return rows


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def comparison_rows(runs: list[Run]) -> list[list[str]]:
    rows = []
    for r in runs:
        m = r.metrics
        rows.append([_esc(r.label), _esc(r.method), _esc(m.get("model", "n/a")), _int(m.get("trainable_params")),
                     _int(m.get("epochs")), _secs(m.get("train_time_s")), "yes" if m.get("with_tte") else "no",
                     *(pct(m.get(k)) for k in METRIC_KEYS)])
    return rows


# ----------------------------------------------------------------------------- page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1300px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.tail td:nth-child(1), table.tail td:nth-child(4) { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #8a5a00; } .muted { color: #666; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 0.8em; }
"""

# First thing in <head>: script errors, failed loads and console.error land in <html data-console-errors>,
# readable from a DOM dump whatever the browser's log format.
_ERROR_HOOK = """
(function () {
  function record(msg) {
    var d = document.documentElement.dataset;
    d.consoleErrors = (d.consoleErrors ? d.consoleErrors + " | " : "") + msg;
  }
  window.addEventListener("error", function (e) {
    record(e.message || ("failed to load " + ((e.target && (e.target.src || e.target.href)) || "a resource")));
  }, true);
  var original = console.error;
  console.error = function () { record(Array.prototype.join.call(arguments, " ")); original.apply(console, arguments); };
})();
"""

# Lets a headless browser (and a reader) verify every plot decoded: readable from a DOM dump.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.dataset.imagesTotal = String(imgs.length);
  document.body.dataset.imagesLoaded = bad.length === 0 ? "true" : "false";
  if (bad.length) { document.body.dataset.imagesBroken = bad.map(function (i) { return i.getAttribute("src"); }).join(" "); }
});
"""


def _img(name: str | None, alt: str, out_dir: Path) -> str:
    """The plot inlined as a data URI, so index.html alone is the whole report (the PNG stays beside it)."""
    if name is None:
        return f'<p class="note">{_esc(alt)}: no data.</p>'
    data = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}" data-file="{_esc(name)}" alt="{_esc(alt)}"></p>'


def render_html(runs: list[Run], images: dict, title: str, top: int, out_dir: Path) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>",
             f"<script>{_ERROR_HOOK}</script><style>{_CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>",
             '<p class="muted">Runs: ' + ", ".join(f"<code>{_esc(r.path)}</code>" for r in runs) + "</p>"]
    parts.append("<h2>Comparison</h2>")
    parts.append('<p class="muted">Final numbers in %, with TTE where the run used it (column TTE); '
                 '"n/a": no evaluation class in that group.</p>')
    parts.append(_table(["run", "method", "model", "trainable params", "epochs", "train time", "TTE", "overall",
                         "mean class", "head", "medium", "tail"], comparison_rows(runs), "compare"))
    parts.append("<h2>Head / medium / tail accuracy</h2>")
    parts.append(_img(images.get("groups"), "head/medium/tail accuracy", out_dir))
    parts.append("<h2>Learning curves</h2>")
    parts.append(_img(images.get("curves"), "learning curves", out_dir))
    for i, r in enumerate(runs):
        parts.append(f"<h2>Run: {_esc(r.label)} <span class=\"muted\">({_esc(r.method)}, {_esc(r.metrics.get('model', 'n/a'))})</span></h2>")
        for note in r.notes:
            parts.append(f'<p class="note">{_esc(note)}</p>')
        parts.append("<h3>Per-class accuracy vs. training frequency</h3>")
        parts.append(_img(images.get(("per_class", i)), f"{r.label} per-class accuracy", out_dir))
        rows = tail_confusions(r, top)
        mode = rows[0]["mode"] if rows else r.final_mode
        parts.append(f"<h3>Most-confused tail classes <span class=\"muted\">({_esc(MODE_LABELS.get(mode, mode))})</span></h3>")
        if rows:
            parts.append(_table(
                ["tail class", "train count", "accuracy %", "most frequent wrong prediction", "count"],
                [[_esc(t["name"]), _int(t["train_count"]), pct(t["accuracy"]),
                  _esc(t["predicted"]) if t["predicted"] is not None else "none",
                  _int(t["predicted_count"]) if t["predicted_count"] is not None else "–"] for t in rows], "tail"))
        else:
            parts.append('<p class="note">No tail class in this run.</p>')
        if r.config_text:
            parts.append(f"<details><summary>config.yaml</summary><pre>{_esc(r.config_text)}</pre></details>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def write_report(run_dirs: list[Path], out_dir: Path, title: str = "LIFT run report", top: int = 10) -> Path:
    """Build DIR/index.html plus its PNGs from the given run directories; returns the index path."""
    if not run_dirs:
        raise DataError("no run directory given")
    runs = [load_run(p) for p in run_dirs]  # validate all before writing anything
    _unique_labels(runs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict = {"groups": plot_groups(runs, out_dir, "groups.png"),
                    "curves": plot_curves(runs, out_dir, "curves.png")}
    for i, r in enumerate(runs):
        images[("per_class", i)] = plot_per_class(r, out_dir, f"per_class_{i + 1}.png")
    page = render_html(runs, images, title, top, out_dir)
    index = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)  # a reader never sees a half-written page
    return index
