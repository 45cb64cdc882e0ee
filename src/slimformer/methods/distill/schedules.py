"""Values that change over training (temperature, alpha, loss weights): a number, or
``{schedule: linear|cosine|constant, start: .., end: ..}`` evaluated at progress p in [0, 1]."""

import math
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from slimformer.config import StrictConfig
from slimformer.registry import Registry

SCHEDULES: Registry[Callable[[float, float, float], float]] = Registry("schedule")


@SCHEDULES.register("constant")
def constant(start: float, end: float, p: float) -> float:
    return start


@SCHEDULES.register("linear")
def linear(start: float, end: float, p: float) -> float:
    return start + (end - start) * p


@SCHEDULES.register("cosine")
def cosine(start: float, end: float, p: float) -> float:
    """Half-cosine from start to end: slow at both ends, fastest in the middle."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))


class Schedule(StrictConfig):
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    start: float
    end: float = Field(description="value at the end of the stage (ignored by constant)")

    def at(self, progress: float) -> float:
        return SCHEDULES.get(self.schedule)(self.start, self.end, min(max(progress, 0.0), 1.0))


ScheduledValue = float | Schedule


def value_at(v: ScheduledValue, progress: float) -> float:
    return v.at(progress) if isinstance(v, Schedule) else float(v)


def bounds(v: ScheduledValue) -> tuple[float, float]:
    """Smallest and largest value a schedule takes (schedules here are monotone)."""
    if isinstance(v, Schedule):
        ends = (v.start, v.start if v.schedule == "constant" else v.end)
        return min(ends), max(ends)
    return float(v), float(v)
