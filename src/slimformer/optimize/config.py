"""Settings of the optimize stage / command."""

from pydantic import Field, field_validator, model_validator

from slimformer.config import StrictConfig
from slimformer.optimize.candidates import BY_NAME


class OptimizeConfig(StrictConfig):
    max_drop: float = Field(0.5, ge=0, description="points of the primary metric")
    batch_sizes: list[int] = Field([1, 32], min_length=1)
    choose_by: str = Field("geomean", description="'geomean' over batch sizes, or e.g. 'bs32'")
    seq_len: int = Field(64, gt=1)
    repeats: int = Field(10, gt=0)
    candidates: list[str] | None = None
    threads: list[int] | None = Field(None, description="thread counts to try; default: current")
    calibration_examples: int = Field(500, gt=0)

    @field_validator("candidates")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        unknown = [n for n in v or [] if n not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown candidate(s) {unknown}; known: {', '.join(BY_NAME)}")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b <= 0 for b in v):
            raise ValueError("batch sizes must be positive")
        return v

    @model_validator(mode="after")
    def _choose_by_measured(self) -> "OptimizeConfig":
        names = {f"bs{b}" for b in self.batch_sizes}
        if self.choose_by != "geomean" and self.choose_by not in names:
            raise ValueError(
                f"choose_by {self.choose_by!r} must be 'geomean' or one of {sorted(names)}"
            )
        return self
