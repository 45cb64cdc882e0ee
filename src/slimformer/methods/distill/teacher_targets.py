"""Teacher outputs for a batch: from the on-disk cache when present, else from the teacher
(loaded lazily, so a fully cached run never loads or runs it)."""

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from slimformer.data.batching import LengthGroupedBatchSampler
from slimformer.methods.distill.teacher_cache import TeacherCache
from slimformer.tasks.base import Task


class TeacherTargets:
    def __init__(
        self, task: Task, cache: TeacherCache, load_teacher: Callable[[], PreTrainedModel]
    ) -> None:
        self.task = task
        self.cache = cache
        self._load_teacher = load_teacher
        self._teacher: PreTrainedModel | None = None
        self.teacher_examples = 0  # examples the teacher actually ran on (the log reports it)
        self.cached_examples = 0

    def __call__(self, batch: dict) -> torch.Tensor:
        idx = batch["idx"].cpu().numpy()
        missing = self.cache.missing(idx)
        if missing.any():
            self._fill(batch, np.flatnonzero(missing), idx)
        self.cached_examples += int((~missing).sum())
        rows = self.cache.read(idx).to(batch["input_ids"].device)
        return self.task.unpack(rows, batch)

    @torch.inference_mode()
    def _fill(self, batch: dict, rows: np.ndarray, idx: np.ndarray) -> None:
        if self._teacher is None:
            self._teacher = self._load_teacher().eval()
            self._teacher.to(batch["input_ids"].device)
        sub = {
            k: v[torch.as_tensor(rows, device=v.device)] if torch.is_tensor(v) else v
            for k, v in batch.items()
        }
        out = self.task.teacher_row(self._teacher, sub)
        self.cache.write(idx[rows], out)
        self.teacher_examples += len(rows)

    def all_values(self, ds, collate, batch_size: int = 128) -> np.ndarray:
        """Packed outputs for every row of ``ds`` (N, W), running the teacher only on uncached
        rows."""
        if self.cache.missing(np.arange(len(ds))).any():
            sampler = LengthGroupedBatchSampler(
                [len(x) for x in ds["input_ids"]], batch_size, seed=0, shuffle=False
            )
            for batch in DataLoader(ds, batch_sampler=sampler, collate_fn=collate):
                self(batch)
            self.cache.flush()
        return self.cache.read(np.arange(len(ds))).numpy()
