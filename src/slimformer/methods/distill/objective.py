"""The KD objective: alpha * soft(student, teacher; T) + (1 - alpha) * hard(student, labels).

alpha and T may follow schedules over the stage (e.g. T 5 -> 1). With ``alpha: 0`` this is plain
fine-tuning, so finetune and distill share one training loop and one loss path.
"""

from collections.abc import Callable

import torch
from pydantic import Field, field_validator

from slimformer.config import StrictConfig
from slimformer.methods.distill.losses import HARD_LOSSES, SOFT_LOSSES
from slimformer.methods.distill.schedules import ScheduledValue, bounds, value_at
from slimformer.tasks.base import Task

LossFn = Callable[[object, dict, float], tuple[torch.Tensor, dict[str, float]]]


class DistillLossConfig(StrictConfig):
    soft: str = Field("kl", description="soft loss: " + ", ".join(SOFT_LOSSES.names()))
    hard: str | None = Field("ce", description="hard loss: " + ", ".join(HARD_LOSSES.names()))
    alpha: ScheduledValue = Field(0.5, description="weight of the soft term, in [0, 1]")
    temperature: ScheduledValue = Field(2.0, description="softmax temperature T > 0")
    temperatures: list[float] | None = Field(
        None, description="multi-temperature KD: soft loss averaged over these T (replaces T)"
    )
    relations: dict[str, float] = Field(
        {}, description="extra soft terms with weights, e.g. {rkd_distance: 1, rkd_angle: 2}"
    )

    @field_validator("temperatures")
    @classmethod
    def _temps_positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or min(v) <= 0):
            raise ValueError(f"temperatures must be a non-empty list of values > 0, got {v}")
        return v

    @field_validator("relations")
    @classmethod
    def _relations_known(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = [k for k in v if k not in SOFT_LOSSES]
        if unknown:
            raise ValueError(
                f"unknown soft loss(es) {unknown}; known: {', '.join(SOFT_LOSSES.names())}"
            )
        return v

    @field_validator("soft")
    @classmethod
    def _soft_known(cls, v: str) -> str:
        if v not in SOFT_LOSSES:
            raise ValueError(f"unknown soft loss {v!r}; known: {', '.join(SOFT_LOSSES.names())}")
        return v

    @field_validator("hard")
    @classmethod
    def _hard_known(cls, v: str | None) -> str | None:
        if v is not None and v not in HARD_LOSSES:
            raise ValueError(f"unknown hard loss {v!r}; known: {', '.join(HARD_LOSSES.names())}")
        return v

    @field_validator("temperature")
    @classmethod
    def _t_positive(cls, v: ScheduledValue) -> ScheduledValue:
        if bounds(v)[0] <= 0:
            raise ValueError(f"temperature must be > 0 everywhere in its schedule, got {v}")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha_unit(cls, v: ScheduledValue) -> ScheduledValue:
        lo, hi = bounds(v)
        if lo < 0 or hi > 1:
            raise ValueError(f"alpha must lie in [0, 1] (weight of the soft term), got {v}")
        return v


def make_loss_fn(
    task: Task, cfg: DistillLossConfig, teacher_targets: Callable[[dict], torch.Tensor] | None
) -> LossFn:
    """Build ``loss_fn(model, batch, progress) -> (loss, logs)`` for the training loop."""
    soft = SOFT_LOSSES.get(cfg.soft)
    hard = HARD_LOSSES.get(cfg.hard) if cfg.hard else None

    def loss_fn(model, batch: dict, progress: float):
        alpha = value_at(cfg.alpha, progress) if teacher_targets is not None else 0.0
        t = value_at(cfg.temperature, progress)
        out = task.forward(model, batch)
        logs = {"alpha": alpha, "temperature": t}
        loss = 0.0
        if alpha > 0:
            target = teacher_targets(batch)
            temps = cfg.temperatures or [t]
            soft_loss = sum(soft(out.values, target, out.mask, tk) for tk in temps) / len(temps)
            logs["loss_soft"] = soft_loss.detach().item()
            for name, weight in cfg.relations.items():
                term = SOFT_LOSSES.get(name)(out.values, target, out.mask, t)
                logs[f"loss_{name}"] = term.detach().item()
                soft_loss = soft_loss + weight * term
            loss = loss + alpha * soft_loss
        labels = task.hard_targets(batch)
        if alpha < 1 and hard is not None and labels is not None:
            hard_loss = hard(out.values, labels, out.mask)
            logs["loss_hard"] = hard_loss.detach().item()
            loss = loss + (1 - alpha) * hard_loss
        return loss, logs

    return loss_fn
