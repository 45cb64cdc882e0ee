"""The ``augment:`` block of a distill stage."""

from pydantic import Field, model_validator

from slimformer.config import StrictConfig


class AugmentConfig(StrictConfig):
    copies: int = Field(1, ge=1, description="augmented copies per training example")
    replace: float = Field(
        0.4, ge=0, le=1, description="per-word chance of replacement (TinyBERT: 0.4)"
    )
    candidates: int = Field(15, ge=1, description="replacement drawn from the top K candidates")
    mlm: str | None = Field(
        None,
        description="masked LM (folder or hub id) proposing replacements; default: nearest "
        "neighbours in the teacher's input-embedding space",
    )
    mask: float = Field(0.0, ge=0, le=1, description="per-word chance of the mask token")
    delete: float = Field(0.0, ge=0, le=1, description="per-word chance of deletion")
    ngram: float = Field(
        0.0, ge=0, le=1, description="chance a copy is cut to a random 1..5-word n-gram"
    )
    max_examples: int | None = Field(
        None, gt=0, description="augment a seeded sample of this many training examples"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _does_something(self) -> "AugmentConfig":
        if not any((self.replace, self.mask, self.delete, self.ngram)):
            raise ValueError("augment: set at least one of replace, mask, delete, ngram above 0")
        return self
