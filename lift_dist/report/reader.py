"""One run directory as the report sees it: metrics.json is required, the rest is shown when present."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lift_dist.run_dir import RunDir

PER_CLASS_COLUMNS = {"label", "name", "train_count", "group", "accuracy_no_tte"}
CONFUSION_COLUMNS = {"mode", "true", "predicted", "count"}


@dataclass
class Run:
    path: Path
    label: str
    metrics: dict
    history: list = field(default_factory=list)
    per_class: pd.DataFrame | None = None
    confusions: pd.DataFrame | None = None
    config_text: str = ""
    notes: list = field(default_factory=list)  # what was missing, shown on the page

    @property
    def method(self) -> str:
        mods = self.metrics.get("modules") or []
        return "+".join(str(m) for m in mods) or "n/a"

    @property
    def final_mode(self) -> str:
        return "tte" if self.metrics.get("with_tte") else "no_tte"


def load_run(path: Path) -> Run:
    run = RunDir(path)
    r = Run(path=run.path, label=run.path.resolve().name, metrics=run.read_metrics())
    r.history = run.read_history(strict=True)
    if not r.history:
        r.notes.append("no history.jsonl: learning curves unavailable")
    r.per_class = run.read_per_class(PER_CLASS_COLUMNS)
    if r.per_class is None:
        r.notes.append("no per_class.parquet: per-class plot and tail table unavailable")
    r.confusions = run.read_confusions(CONFUSION_COLUMNS)
    if r.confusions is None:
        r.notes.append("no confusions.parquet: most frequent wrong predictions unavailable")
    if run.config.is_file():
        r.config_text = run.config.read_text(errors="replace")
    return r


def unique_labels(runs: list[Run]) -> None:
    """Two runs can share a directory name (…/a/run, …/b/run): suffix to keep legends and tables distinct."""
    seen: dict[str, int] = {}
    for r in runs:
        n = seen.get(r.label, 0)
        seen[r.label] = n + 1
        if n:
            r.label = f"{r.label} ({n + 1})"
