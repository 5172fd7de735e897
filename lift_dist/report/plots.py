"""The report's plots (PNG, Agg canvas, no pyplot state): per-class accuracy against training frequency,
head / medium / tail bars, learning curves."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from lift_dist.report.format import GROUP_COLORS, GROUPS, MODE_LABELS, num
from lift_dist.report.reader import Run


def _figure(w: float, h: float, nrows: int = 1, ncols: int = 1):
    # Figure + Agg canvas directly: no pyplot global state, no display backend needed.
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
    # LogFormatter: plain "60", not "6×10¹"; it still thins labels on wide ranges.
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
    series = []
    for r in runs:
        for m in ("no_tte", "tte"):
            vals = r.metrics.get(m)
            if m == "no_tte" and not isinstance(vals, dict):
                vals = r.metrics  # older runs: top-level numbers only
            if isinstance(vals, dict):
                series.append((f"{r.label} – {MODE_LABELS[m]}", [num(vals.get(g)) for g in GROUPS], m))
    fig, axes = _figure(max(6.5, 1.1 * len(series) + 4), 4.0)
    ax = axes[0][0]
    x = np.arange(len(GROUPS))
    width = 0.8 / max(1, len(series))
    cmap = matplotlib.colormaps["tab20"]
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
    cmap = matplotlib.colormaps["tab10"]
    any_acc = False
    for j, r in enumerate(runs):
        if not r.history:
            continue
        c = cmap(j % 10)
        mk = "os^Dvx*P"[j % 8]  # distinct markers keep near-identical runs visible when overlaid
        ep = [h.get("epoch", i + 1) for i, h in enumerate(r.history)]
        ax_loss.plot(ep, [num(h.get("loss")) for h in r.history], marker=mk, color=c, label=r.label, alpha=0.85)
        ax_lr.plot(ep, [num(h.get("lr")) for h in r.history], marker=mk, color=c, label=r.label, alpha=0.85)
        # Intermediate evaluations come from history; the last epoch's no-TTE numbers are in metrics.json.
        pts = {h.get("epoch", i + 1): h["eval"] for i, h in enumerate(r.history) if isinstance(h.get("eval"), dict)}
        final = r.metrics.get("no_tte") if isinstance(r.metrics.get("no_tte"), dict) else None
        if final is not None and ep:
            pts.setdefault(max(ep), final)
        for key, style in (("overall", "-"), ("mean_class", "--")):
            xs = sorted(e for e in pts if num(pts[e].get(key)) is not None)
            if xs:
                any_acc = True
                ax_acc.plot(xs, [num(pts[e][key]) for e in xs], style, marker=mk, color=c, alpha=0.85, label=f"{r.label} {key}")
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
