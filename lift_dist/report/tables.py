"""The report's tables as rows of values (the template formats them)."""

from __future__ import annotations

import pandas as pd

from lift_dist.report.format import num
from lift_dist.report.reader import Run


def tail_confusions(r: Run, top: int = 10) -> list[dict]:
    """The tail classes with the lowest accuracy (final mode), each with its most frequent wrong prediction."""
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
        rows.append({"name": str(c["name"]), "train_count": int(c["train_count"]), "accuracy": num(c["acc"]),
                     "eval_count": c.get(f"eval_count_{mode}"), "predicted": wrong, "predicted_count": wrong_n,
                     "mode": mode})
    return rows
