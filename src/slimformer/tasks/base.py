"""What differs between task shapes, in one place.

A task says how to load its model, how to read and tokenize data, and which outputs are
*aligned* between teacher and student (per sequence, per token, per next token) with a mask of
valid positions. Losses take aligned tensors and a mask and know nothing about tasks, so one
temperature KL serves sentence logits, token tags and next-token distributions.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slimformer.data.config import DataConfig
from slimformer.registry import Registry

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Aligned:
    """Outputs compared position by position: ``values`` (N, D) and ``mask`` (N,) bool."""

    values: torch.Tensor
    mask: torch.Tensor


class Task(ABC):
    name: str
    primary_metric: str
    auto_class: type
    lower_is_better: tuple[str, ...] = ()  # metrics where smaller wins (e.g. perplexity)
    # Under mixed precision, accelerate casts a model's outputs to fp32. A task whose losses
    # read low-precision outputs themselves (LLM logits: the cast alone writes ~400 MB a step)
    # sets this to keep them in the autocast dtype.
    keeps_autocast_outputs: bool = False

    def load_model(self, ref: str, trust_remote_code: bool = False, **kwargs) -> PreTrainedModel:
        """``kwargs`` go to ``from_pretrained`` (e.g. label maps for a new classification head).
        Pruned folders (smaller heads/FFN than their config says) get their shapes first."""
        from slimformer.models.prune import load_pretrained

        return load_pretrained(self.auto_class, ref, trust_remote_code=trust_remote_code, **kwargs)

    @abstractmethod
    def raw_splits(self, data: DataConfig, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        """Untokenized (train, eval) datasets, validated (columns exist, not empty)."""

    @abstractmethod
    def prepare(
        self,
        ds: datasets.Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data: DataConfig,
        model_config,
        split: str,
    ) -> datasets.Dataset:
        """Tokenize (cached by datasets) and map labels; adds ``idx`` for the teacher cache."""

    @abstractmethod
    def forward(self, model: PreTrainedModel, batch: dict) -> Aligned:
        """Run the model on a batch and return the outputs that KD aligns."""

    def hard_targets(self, batch: dict) -> torch.Tensor | None:
        return batch.get("labels")

    def hard_loss(self, model, out: Aligned, batch: dict, hard_fn) -> torch.Tensor | None:
        """The hard-label term (None without labels); a task may replace it (e.g. a CRF)."""
        labels = self.hard_targets(batch)
        return None if labels is None else hard_fn(out.values, labels, out.mask)

    def posterior_values(
        self, model, out: Aligned, batch: dict, temperature: float
    ) -> torch.Tensor:
        """What posterior KD compares with the teacher's outputs at ``temperature``: a
        structured output's marginals (a CRF's) where the task has one, else the outputs."""
        return out.values

    def predict_values(self, model, batch: dict) -> torch.Tensor:
        """Outputs as metrics read them (a task may decode, e.g. Viterbi with a CRF)."""
        return self.forward(model, batch).values

    def teacher_row(self, model, batch: dict) -> torch.Tensor:
        """What the teacher cache keeps for each example: its packed aligned outputs."""
        return self.pack(self.forward(model, batch).values, batch)

    def collator(self, tokenizer: PreTrainedTokenizerBase):
        """Pads a list of prepared rows into a batch."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    @property
    def classes_per_position(self) -> int | None:
        """Classes of each position in a packed row when rows hold several positions."""
        return None

    def pack(self, values: torch.Tensor, batch: dict) -> torch.Tensor:
        """Aligned outputs of a batch -> one fixed-width row per example (B, W), the layout of
        the teacher cache and of predictions. Identity for one output per example."""
        return values

    def unpack(self, rows: torch.Tensor, batch: dict) -> torch.Tensor:
        """Inverse of ``pack`` for ``batch``'s shape."""
        return rows

    @abstractmethod
    def metrics(
        self, values: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None
    ) -> dict[str, float]:
        """Task metrics from aligned outputs; ``reference`` = the teacher's, for fidelity."""


TASKS: Registry[type[Task]] = Registry("task")


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def tokenize(
    ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    pair: str | None,
    max_length: int,
    keep: list[str],
) -> datasets.Dataset:
    """Tokenize without padding (the collator pads per batch); datasets caches the result."""

    def encode(rows):
        texts = [str(t).strip() for t in rows[text]]
        pairs = [str(t).strip() for t in rows[pair]] if pair else None
        return tokenizer(texts, pairs, truncation=True, max_length=max_length)

    drop = [c for c in ds.column_names if c not in keep]
    ds = ds.map(encode, batched=True, remove_columns=drop, desc="tokenizing")
    return ds.add_column("idx", list(range(len(ds))))
