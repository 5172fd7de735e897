"""How numbers read on the page: percentages, counts, durations; n/a for null / NaN / missing."""

from __future__ import annotations

import math

GROUPS = ("head", "medium", "tail")
METRIC_KEYS = ("overall", "mean_class", "head", "medium", "tail")
GROUP_COLORS = {"head": "#4c72b0", "medium": "#dd8452", "tail": "#c44e52"}
MODE_LABELS = {"no_tte": "without TTE", "tte": "with TTE"}


def num(v) -> float | None:
    """A metric as a float, or None for null / NaN / missing (an empty group) and for what is no finite
    number (a string, infinity: a damaged or hand-edited file shows n/a, not a traceback)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def pct(v) -> str:
    f = num(v)
    return "n/a" if f is None else f"{100 * f:.2f}"


def integer(v) -> str:
    f = num(v)
    return "n/a" if f is None else f"{int(f):,}"


def seconds(v) -> str:
    f = num(v)
    if f is None:
        return "n/a"
    return f"{f:.1f} s" if f < 120 else f"{f / 60:.1f} min"
