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
    """Aligned outputs (N, D) in dataset order; batches sorted by length to avoid padding."""
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
        values = task.forward(model, batch).values.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(ds), values.shape[-1]), dtype=np.float32)
        out[batch["idx"].cpu().numpy()] = values
    model.train(was_training)
    return out


def labels_of(ds: datasets.Dataset) -> np.ndarray | None:
    return np.asarray(ds["labels"]) if "labels" in ds.column_names else None


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
