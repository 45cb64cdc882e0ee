"""Run a model over a prepared dataset and evaluate it with the task's metrics."""

from collections.abc import Callable

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from slimformer.data.batching import LengthGroupedBatchSampler
from slimformer.tasks.base import Task


@torch.inference_mode()
def predict(
    model: PreTrainedModel,
    task: Task,
    ds: datasets.Dataset,
    collate: Callable,
    batch_size: int = 128,
    desc: str = "predict",
) -> np.ndarray:
    """Outputs (N, W) in dataset order, one packed row per example (``Task.pack``); batches
    sorted by length to avoid padding."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sampler = LengthGroupedBatchSampler(
        [len(x) for x in ds["input_ids"]], batch_size, seed=0, shuffle=False
    )
    out: np.ndarray | None = None
    for batch in tqdm(
        DataLoader(ds, batch_sampler=sampler, collate_fn=collate),
        desc=desc,
        leave=False,
        unit="batch",
    ):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        values = task.pack(task.predict_values(model, batch), batch).float().cpu().numpy()
        if out is None:
            out = np.zeros((len(ds), values.shape[-1]), dtype=np.float32)
        out[batch["idx"].cpu().numpy()] = values
    model.train(was_training)
    return out


def labels_of(ds: datasets.Dataset) -> np.ndarray | None:
    """Gold labels in the layout task metrics read (per-token rows padded with -100)."""
    if "labels" not in ds.column_names:
        return None
    if "word_start" in ds.column_names:  # token classification: first sub-tokens only
        width = max(len(x) for x in ds["labels"])
        out = np.full((len(ds), width), -100, dtype=np.int64)
        for i, (labels, starts) in enumerate(zip(ds["labels"], ds["word_start"], strict=True)):
            row = np.asarray(labels)
            out[i, : len(row)] = np.where(np.asarray(starts) == 1, row, -100)
        return out
    return np.asarray(ds["labels"])


def evaluate(
    model: PreTrainedModel,
    task: Task,
    ds: datasets.Dataset,
    collate: Callable,
    reference: np.ndarray | None = None,
    batch_size: int = 128,
) -> dict[str, float]:
    values = predict(model, task, ds, collate, batch_size, desc="eval")
    return task.metrics(values, labels_of(ds), reference)
