"""The training loop's settings (shared by finetune and distill stages)."""

from typing import Literal

from pydantic import Field

from slimformer.config import StrictConfig


class TrainConfig(StrictConfig):
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(128, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    eval_every: int | None = Field(None, gt=0, description="steps; default: end of each epoch")
    save_every: int = Field(200, gt=0, description="checkpoint every N optimizer steps")
    log_every: int = Field(20, gt=0)
    best_metric: str | None = Field(
        None,
        description="eval metric that picks the kept checkpoint (higher is better), e.g. mcc; "
        "default: the task's (accuracy, f1, spearman for regression, retained_mean multi-task)",
    )
    freeze_embeddings: bool = Field(
        False,
        description="keep the token embeddings (and a head tied to them) fixed: for LLMs the "
        "vocabulary matrix is a large share of the compute of each step's weight update",
    )
    embedding_rows: Literal["auto", "seen", "all"] = Field(
        "auto",
        description="seen: only the word-embedding rows of token ids in the training data are "
        "an AdamW parameter; the others never get a gradient, so AdamW's update for them is "
        "weight decay alone, applied when the table is written back (the same result, ~20% "
        "less of a small student's step); all: the whole table; auto: seen unless the table "
        "is tied to an output layer, frozen, not a plain lookup (scaled, fake-quantized) or "
        "over 90% of it is seen",
    )
    freeze_encoder: bool = Field(
        False, description="train only the task head (embeddings and blocks frozen)"
    )
    attn_implementation: Literal["eager", "sdpa"] | None = Field(
        None,
        description="the student's attention kernel while it trains (its saved config keeps its "
        "own): on 2 CPU cores eager ran a 3-layer MiniLM step at 26 tokens ~13% faster than "
        "sdpa and the same at 64; null keeps the model's",
    )
    keep_freed_memory: bool = Field(
        True,
        description="glibc: keep freed memory in the heap while training instead of unmapping "
        "big blocks after each step and faulting them in again (~20% of a small student's step "
        "on 2 cores); set false to return memory to the OS as soon as it is freed",
    )
    fast_dropout: bool | Literal["auto"] = Field(
        "auto",
        description="CPU: draw dropout masks four 15-bit values per 64-bit random draw instead "
        "of one draw per element (the same Bernoulli masks in distribution; ~2.5x faster where "
        "torch uses its serial generator, e.g. AMD EPYC, where the masks were ~15% of a 3-layer "
        "MiniLM step on 2 cores); auto: time both once and keep the faster; false: torch's",
    )
