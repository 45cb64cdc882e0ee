"""Pick the fastest candidate that keeps accuracy: a pure function of the measured table, so
the rule is tested with made-up timings and explained in the report."""

import math
from dataclasses import dataclass


@dataclass
class Row:
    name: str
    metric: float  # the task's primary metric, in [0, 1] for accuracy/F1/correlations
    latency_ms: dict[str, float]  # {"bs1": ms, "bs32": ms}
    size_mb: float = 0.0


def drop_points(baseline: float, metric: float) -> float:
    """Metric lost against the baseline, in points (0.8853 -> 0.8830 is 0.23)."""
    return round((baseline - metric) * 100, 4)


def score(row: Row, baseline: Row, choose_by: str) -> float:
    """Lower is better: latency at one batch size ("bs32"), or the geometric mean over the
    measured batch sizes of latency relative to the baseline ("geomean")."""
    if choose_by != "geomean":
        return row.latency_ms[choose_by]
    ratios = [row.latency_ms[k] / baseline.latency_ms[k] for k in baseline.latency_ms]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def choose(rows: list[Row], baseline: str, max_drop: float, choose_by: str = "geomean") -> dict:
    """The fastest row whose drop against ``baseline`` is at most ``max_drop`` points; ties go
    to the smaller artifact. The baseline always qualifies, so there is always a choice."""
    base = next(r for r in rows if r.name == baseline)
    within = [r for r in rows if drop_points(base.metric, r.metric) <= max_drop + 1e-9]
    best = min(within, key=lambda r: (score(r, base, choose_by), r.size_mb))
    rejected = {
        r.name: f"drop {drop_points(base.metric, r.metric):.2f} > {max_drop} points"
        for r in rows
        if r not in within
    }
    return {
        "name": best.name,
        "score": round(score(best, base, choose_by), 4),
        "choose_by": choose_by,
        "max_drop_points": max_drop,
        "drop_points": drop_points(base.metric, best.metric),
        "rejected_for_accuracy": rejected,
    }
