"""The ``intermediate:`` block of a KD stage: which layer-wise terms, their weights (numbers or
schedules), the layer mapping and the rule for attention when head counts differ."""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from slimformer.config import StrictConfig
from slimformer.methods.distill.layerwise.mapping import MappingRule
from slimformer.methods.distill.losses import LAYER_LOSSES
from slimformer.methods.distill.schedules import ScheduledValue, bounds


class IntermediateConfig(StrictConfig):
    terms: dict[str, ScheduledValue] = Field(
        description="layer-wise terms and their weights (number or schedule): "
        + ", ".join(LAYER_LOSSES.names()),
        min_length=1,
    )
    mapping: MappingRule = Field(
        "uniform",
        description="uniform (m*T/S), last, or one teacher layer number (1..T) per student layer",
    )
    heads: Literal["same", "mean", "regroup"] = Field(
        "same",
        description="attention with different head counts: same (error), mean over heads, or "
        "regroup both into relation_heads (MiniLMv2)",
    )
    relation_heads: int | None = Field(None, gt=0, description="head count for heads: regroup")
    teacher_states: Literal["online", "cache"] = Field(
        "cache",
        description="teacher hidden states/attention: computed once before training (one "
        "pass in length-sorted batches), kept on disk in fp16 and read back in every epoch and "
        "later runs (cache; measured faster), or recomputed every batch (online: no disk; "
        "the cache takes ~4.4 KB a token for SST-2 and a 3-layer student)",
    )

    @field_validator("terms")
    @classmethod
    def _known_terms(cls, v: dict[str, ScheduledValue]) -> dict[str, ScheduledValue]:
        LAYER_LOSSES.check_known(v)
        for name, weight in v.items():
            if bounds(weight)[0] < 0:
                raise ValueError(f"weight of {name} must be >= 0, got {weight}")
        return v

    @model_validator(mode="after")
    def _regroup_needs_count(self) -> "IntermediateConfig":
        if self.heads == "regroup" and self.relation_heads is None:
            raise ValueError("intermediate.heads: regroup needs relation_heads (e.g. 4)")
        return self
