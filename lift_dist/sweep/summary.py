"""After the sweep: results.parquet (one row per trial), best.yaml (the best trial's config, pointed at the
full training shards and the test split), the best run's test metrics, summary.json and a plot of the
objective against every searched dimension."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

from lift_dist.config import config_yaml
from lift_dist.data.manifest import read_manifest
from lift_dist.engine.evaluate import evaluate, load_run, precisions
from lift_dist.errors import DataError
from lift_dist.predict import pick_device
from lift_dist.run_dir import RunDir, summary_metrics, write_atomic
from lift_dist.sweep.space import SIZE_DIMENSIONS, used_params
from lift_dist.sweep.trial import METRICS, run_name

LOG_DIMENSIONS = ("alpha", "lr", "r")


def trial_rows(grid, space: dict, epochs: int, runs: Path) -> list[dict]:
    rows = []
    for r in grid:
        params = {k: v for k, v in r.config.items() if not k.startswith("_")}
        used = used_params(params)
        m = r.metrics or {}
        status = "error" if r.error else ("completed" if (m.get("training_iteration") or 0) >= epochs else "stopped")
        rows.append({
            "trial_id": run_name(str(m.get("trial_id"))),  # the same trial in every run of the driver
            # Dimensions a trial's module does not use are left empty, so plots and tables don't mislead.
            **{k: (used.get(k) if k in SIZE_DIMENSIONS else params.get(k)) for k in space},
            **{k: m.get(k) for k in METRICS}, "epochs_run": m.get("training_iteration"),
            "status": status,  # stopped: the scheduler ended it early
            "run_dir": str(runs / run_name(str(m.get("trial_id")))),
        })
    return rows


def summarise(grid, space: dict, args, shards: Path, base, out: Path) -> dict:
    rows = trial_rows(grid, space, base.optim.epochs, out / "runs")
    # Every output is written aside and renamed: a sweep stopped while summarising keeps the last complete files.
    table = io.BytesIO()
    pq.write_table(pa.table({k: [row[k] for row in rows] for k in rows[0]} if rows else {}), table)
    write_atomic(out / "results.parquet", table.getvalue())
    done = [r for r in rows if r["status"] == "completed" and r[args.metric] is not None]
    if not done:
        raise DataError(f"no trial completed; see the trials' logs in {out / 'runs'}")
    best = max(done, key=lambda r: r[args.metric])
    write_best_config(Path(best["run_dir"]), shards, base, out / "best.yaml",
                      f"# best trial {best['trial_id']}: {args.metric} {best[args.metric]:.4f} on the held-out split\n")
    test = evaluate_on_test(Path(best["run_dir"]), shards, base, args.device)
    summary = {"best_trial": best["trial_id"], "metric": args.metric, "validation": {k: best[k] for k in METRICS},
               "params": {k: best[k] for k in space}, "test": test, "trials": len(rows),
               "completed": len(done), "stopped": sum(r["status"] == "stopped" for r in rows)}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    plot_results(rows, space, args.metric, out / "metric_vs_params.png")
    return summary


def write_best_config(run_dir: Path, shards: Path, base, path: Path, header: str) -> None:
    """The best trial's settings, to train on all the training data and report on the test split."""
    cfg = RunDir(run_dir).read_config()
    cfg.data.shards, cfg.data.train_split, cfg.data.eval_split = str(shards), base.data.train_split, base.data.eval_split
    cfg.data.tte, cfg.eval_every_epochs, cfg.resume, cfg.out = base.data.tte, 0, None, str(Path("runs/best").absolute())
    cfg.data.resolution = base.data.resolution  # the trial's config.yaml holds the resolved one
    write_atomic(path, header + config_yaml(cfg))


def evaluate_on_test(run_dir: Path, shards: Path, base, device: str = "auto") -> dict:
    dev = pick_device(device)
    model, cfg = load_run(run_dir)
    model.to(dev)
    d = base.data
    train_m, test_m = (read_manifest(shards, s, d.shard_pipe, d.shard_retries) for s in (d.train_split, d.eval_split))
    res = cfg.data.resolution or model.encoder.image_size
    d = cfg.data.model_copy(update={"tte": base.data.tte, "tte_mode": base.data.tte_mode, "tte_expand": base.data.tte_expand,
                                    "tte_views": base.data.tte_views})
    m = evaluate(model, test_m, train_m.train_counts, d, resolution=res, tte=base.data.tte, workers=1, device=dev,
                 precision=precisions(cfg, dev)[1])  # as the trial's own run evaluated
    return summary_metrics(m) | {"split": test_m.split, "tte": base.data.tte, "device": dev.type}


def plot_results(rows: list[dict], space: dict, metric: str, path: Path) -> None:
    keys = list(space)
    fig = Figure(figsize=(4 * len(keys), 3.6))  # no pyplot: no global state, no display backend
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r[key], r[metric], r["status"]) for r in rows if r.get(key) is not None and r.get(metric) is not None]
        names = sorted({str(p[0]) for p in pts}) if key == "module" else []
        for status, colour in (("completed", "tab:blue"), ("stopped", "tab:orange"), ("error", "tab:red")):
            xs = [names.index(str(p[0])) if names else p[0] for p in pts if p[2] == status]
            ax.scatter(xs, [p[1] for p in pts if p[2] == status], c=colour, label=status, s=24)
        if names:
            ax.set_xticks(range(len(names)), names)
        if not pts:  # e.g. alpha when no trial drew the sparse module
            ax.text(0.5, 0.5, "no trial used it", ha="center", va="center", transform=ax.transAxes)
        elif key in LOG_DIMENSIONS and all(isinstance(p[0], (int, float)) and p[0] > 0 for p in pts):
            ax.set_xscale("log")  # a log axis without positive data cannot place its ticks
            # At most ~4 labelled decades, tilted: α's labels (1e-3 .. 1e-1 and minors) overlapped.
            ax.xaxis.set_major_locator(LogLocator(numticks=4))
            ax.xaxis.set_major_formatter(LogFormatterSciNotation())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(f"validation {metric}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    write_atomic(path, png.getvalue())
