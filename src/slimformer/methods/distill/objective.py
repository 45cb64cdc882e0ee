"""The KD objective:

    prediction_weight * [alpha * soft(student, teacher; T) + (1 - alpha) * hard(student, labels)]
    + sum of weighted layer-wise terms (``intermediate``)

alpha, T and every weight may follow schedules over the stage (e.g. T 5 -> 1, prediction weight
0.3 -> 1 while the intermediate weights fall). With ``alpha: 0`` this is plain fine-tuning, so
finetune and distill share one training loop and one loss path.
"""

from collections.abc import Callable
from contextlib import nullcontext
from typing import Literal

import torch
from pydantic import Field, field_validator

from slimformer.config import StrictConfig
from slimformer.methods.distill.layerwise.config import IntermediateConfig
from slimformer.methods.distill.layerwise.distiller import LayerwiseDistiller
from slimformer.methods.distill.losses import HARD_LOSSES, SOFT_LOSSES
from slimformer.methods.distill.losses.picked_log_probs import shared_picks
from slimformer.methods.distill.losses.token_support import TopKLogProbs
from slimformer.methods.distill.schedules import ScheduledValue, bounds, value_at
from slimformer.tasks.base import Task

LossFn = Callable[[object, dict, float], tuple[torch.Tensor, dict[str, float]]]


class DistillLossConfig(StrictConfig):
    soft: str = Field("kl", description="soft loss: " + ", ".join(SOFT_LOSSES.names()))
    hard: str | None = Field("ce", description="hard loss: " + ", ".join(HARD_LOSSES.names()))
    soft_options: dict[str, float] = Field(
        {}, description="options of the soft loss, e.g. {beta: 0.5} for jsd, {skew: 0.1}"
    )
    alpha: ScheduledValue = Field(0.5, description="weight of the soft term, in [0, 1]")
    temperature: ScheduledValue = Field(2.0, description="softmax temperature T > 0")
    temperatures: list[float] | None = Field(
        None, description="multi-temperature KD: soft loss averaged over these T (replaces T)"
    )
    relations: dict[str, float] = Field(
        {}, description="extra soft terms with weights, e.g. {rkd_distance: 1, rkd_angle: 2}"
    )
    crf_kd: Literal["emissions", "marginals"] = Field(
        "emissions",
        description="with a CRF student (token classification): the soft term on a softmax of "
        "its emission scores, or on the CRF's per-word marginals (posterior distillation)",
    )
    prediction_weight: ScheduledValue = Field(
        1.0, description="weight of the prediction (logit) part; 0 = intermediate terms only"
    )
    intermediate: IntermediateConfig | None = Field(
        None, description="layer-wise terms (hidden states, attention) against the teacher"
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
        SOFT_LOSSES.check_known(v)
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

    @field_validator("prediction_weight")
    @classmethod
    def _weight_non_negative(cls, v: ScheduledValue) -> ScheduledValue:
        if bounds(v)[0] < 0:
            raise ValueError(f"prediction_weight must be >= 0 everywhere, got {v}")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha_unit(cls, v: ScheduledValue) -> ScheduledValue:
        lo, hi = bounds(v)
        if lo < 0 or hi > 1:
            raise ValueError(f"alpha must lie in [0, 1] (weight of the soft term), got {v}")
        return v


class KDLoss:
    """``loss(model, batch, progress) -> (loss, logs)`` for the training loop.

    ``aux_module`` holds the loss's own trainable parameters (the layer-wise projections): the
    loop optimises and checkpoints it with the model and puts back the prepared module.
    """

    def __init__(
        self,
        task: Task,
        cfg: DistillLossConfig,
        teacher_targets: Callable[[dict], torch.Tensor] | None,
        layerwise: LayerwiseDistiller | None = None,
    ) -> None:
        self.task, self.cfg, self.teacher_targets, self.layerwise = (
            task,
            cfg,
            teacher_targets,
            layerwise,
        )
        soft = SOFT_LOSSES.get(cfg.soft)
        options = dict(cfg.soft_options)
        self.soft = (lambda s, t, m, tk: soft(s, t, m, tk, **options)) if options else soft
        self.hard = HARD_LOSSES.get(cfg.hard) if cfg.hard else None
        has_params = layerwise is not None and any(True for _ in layerwise.projector.parameters())
        self.aux_module = layerwise.projector if has_params else None
        # one teacher forward per batch: the layer-wise pass fills the logit cache too
        if layerwise is not None and hasattr(teacher_targets, "offer"):
            layerwise.on_teacher_output = teacher_targets.offer

    def __call__(self, model, batch: dict, progress: float):
        cfg = self.cfg
        lw = self.layerwise
        if lw is not None and self.aux_module is not None:
            lw.projector = self.aux_module  # the prepared module the loop handed back
        alpha = value_at(cfg.alpha, progress) if self.teacher_targets is not None else 0.0
        t = value_at(cfg.temperature, progress)
        pw = value_at(cfg.prediction_weight, progress)
        with lw.student_recorder.record() if lw is not None else nullcontext():
            out = self.task.forward(model, batch)
        logs = {"alpha": alpha, "temperature": t}
        teacher_internals = None
        if lw is not None:
            logs["prediction_weight"] = pw
            teacher_internals = lw.teacher_internals(batch)  # before the logits: see offer
        target = self.teacher_targets(batch) if alpha > 0 and pw > 0 else None
        temps = cfg.temperatures or [t]
        with shared_picks(out.values, self._shared_pick_sets(target, batch, temps, alpha)):
            loss = self._prediction_terms(model, out, batch, target, temps, (alpha, t, pw), logs)
        if lw is not None:
            inter, inter_logs = lw.loss(batch, progress, teacher_internals)
            logs.update(inter_logs)
            loss = loss + inter
        if not torch.is_tensor(loss):  # every weight is 0 at this point of the schedules
            loss = out.values.sum() * 0.0
        return loss, logs

    def _prediction_terms(self, model, out, batch, target, temps, weights, logs):
        """The soft (+ relation) and hard terms on the student's outputs, weighted."""
        alpha, t, pw = weights
        loss = 0.0
        if target is not None:
            soft_loss = sum(
                self.soft(self._soft_values(model, out, batch, tk), target, out.mask, tk)
                for tk in temps
            ) / len(temps)
            logs["loss_soft"] = soft_loss.detach().item()
            for name, weight in self.cfg.relations.items():
                term = SOFT_LOSSES.get(name)(out.values, target, out.mask, t)
                logs[f"loss_{name}"] = term.detach().item()
                soft_loss = soft_loss + weight * term
            loss = loss + pw * alpha * soft_loss
        if alpha < 1 and pw > 0 and self.hard is not None:
            hard_loss = self.task.hard_loss(model, out, batch, self.hard)
            if hard_loss is not None:
                logs["loss_hard"] = hard_loss.detach().item()
                loss = loss + pw * (1 - alpha) * hard_loss
        return loss

    def _soft_values(self, model, out, batch, t: float) -> torch.Tensor:
        if self.cfg.crf_kd == "emissions":
            return out.values
        return self.task.posterior_values(model, out, batch, t)

    def _shared_pick_sets(self, target, batch, temps, alpha) -> list[torch.Tensor]:
        """The student-logit indices both the top-k KD term and cross-entropy pick at T = 1
        (LLM distillation): computed together, one pass over the vocabulary-sized logits."""
        if not isinstance(target, TopKLogProbs) or list(temps) != [1.0] or not alpha < 1:
            return []
        labels = self.task.hard_targets(batch) if self.hard is not None else None
        if labels is None or labels.dim() != 1:
            return []
        return [target.indices, labels.long().clamp(min=0)[:, None]]


def make_loss_fn(
    task: Task,
    cfg: DistillLossConfig,
    teacher_targets: Callable[[dict], torch.Tensor] | None,
    layerwise: LayerwiseDistiller | None = None,
) -> KDLoss:
    """The stage's loss; ``layerwise`` adds the intermediate terms (built from the models)."""
    return KDLoss(task, cfg, teacher_targets, layerwise)
