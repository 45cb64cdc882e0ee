"""Task-agnostic sentence embeddings (general distillation): one mean-pooled vector per text.

Training data are single sentences; eval data are sentence pairs, flattened to
[a0, b0, a1, b1, ...] so the same collator and cache serve them. Fidelity is the Spearman
correlation between the student's and the teacher's cosine similarities of those pairs.
"""

import datasets
import numpy as np
import torch
from transformers import AutoModel

from slimformer.data.config import DataConfig
from slimformer.data.readers import read_table, require_columns
from slimformer.data.text_corpus import sentence_splits
from slimformer.tasks.base import TASKS, Aligned, Task, model_inputs, tokenize
from slimformer.tasks.metrics import spearman


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H) average over real tokens, as sentence-transformers does."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def pair_cosines(flat: np.ndarray) -> np.ndarray:
    a, b = flat[0::2], flat[1::2]
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-9)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-9)
    return (a * b).sum(1)


@TASKS.register("sentence-embedding")
class SentenceEmbedding(Task):
    name = "sentence-embedding"
    primary_metric = "fidelity"
    auto_class = AutoModel

    def raw_splits(self, data: DataConfig, seed: int):
        if data.eval:
            train, _ = sentence_splits(data.train, 2, seed)
            evl = read_table(data.eval, fmt=data.format, split=data.eval_split)
            require_columns(
                evl, [data.text_column, data.text_pair_column or "text_pair"], data.eval
            )
            evl = evl.rename_columns(
                {data.text_column: "text", data.text_pair_column or "text_pair": "text_pair"}
            )
        else:
            train, evl = sentence_splits(data.train, data.eval_pairs, seed)
        if data.max_train_examples:
            train = train.shuffle(seed=seed).select(range(min(len(train), data.max_train_examples)))
        return train, evl

    def prepare(self, ds, tokenizer, data: DataConfig, model_config, split: str):
        if "text_pair" in ds.column_names:  # eval pairs -> flat sentence list
            flat = [t for a, b in zip(ds["text"], ds["text_pair"], strict=True) for t in (a, b)]
            ds = datasets.Dataset.from_dict({"text": flat})
        return tokenize(ds, tokenizer, "text", None, data.max_length, keep=[])

    def forward(self, model, batch) -> Aligned:
        hidden = model(**model_inputs(batch)).last_hidden_state  # (B, T, H)
        pooled = mean_pool(hidden, batch["attention_mask"])
        return Aligned(pooled, torch.ones(pooled.shape[0], dtype=torch.bool, device=pooled.device))

    def hard_targets(self, batch):
        return None

    def metrics(self, values, labels, reference):
        if reference is None:
            return {}
        return {"fidelity": spearman(pair_cosines(values), pair_cosines(reference))}
