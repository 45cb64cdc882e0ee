"""Several tasks' training data in one loader: every batch holds one task's rows (so that task's
collator, head and loss apply), and which task comes next follows a sampling rule.

Rules (``p_i`` = chance that the next batch is task i's, ``n_i`` = its training rows):
  proportional   p_i ~ n_i             (every row seen about once an epoch)
  temperature    p_i ~ n_i ** (1 / T)  (T > 1 flattens: small tasks are seen more often)
  round-robin    tasks in turn          (equal numbers of batches)
An epoch is as many batches as all tasks have together; a task that runs out of batches starts
another seeded pass over its rows.
"""

import bisect
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
from torch.utils.data import Dataset, Sampler

from slimformer.data.batching import LengthGroupedBatchSampler

SamplingRule = Literal["proportional", "temperature", "round-robin"]
TASK_KEY = "task"


def task_probabilities(
    sizes: dict[str, int], rule: SamplingRule, temperature: float = 2.0
) -> dict[str, float]:
    """The chance of drawing each task for the next batch."""
    if rule == "round-robin":
        weights = {n: 1.0 for n in sizes}
    elif rule == "proportional":
        weights = {n: float(s) for n, s in sizes.items()}
    elif rule == "temperature":
        weights = {n: float(s) ** (1.0 / temperature) for n, s in sizes.items()}
    else:
        raise ValueError(f"unknown sampling rule {rule!r}")
    total = sum(weights.values())
    return {n: w / total for n, w in weights.items()}


class MultiTaskDataset(Dataset):
    """Tasks' datasets end to end; a row carries its task's name under ``task``."""

    def __init__(self, parts: dict) -> None:
        self.parts = dict(parts)
        self.names = list(self.parts)
        self.offsets: dict[str, int] = {}
        start = 0
        for name in self.names:
            self.offsets[name] = start
            start += len(self.parts[name])
        self._starts = [self.offsets[n] for n in self.names]
        self._len = start

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        name = self.names[bisect.bisect_right(self._starts, index) - 1]
        row = dict(self.parts[name][index - self.offsets[name]])
        row[TASK_KEY] = name
        return row


class MultiTaskCollator:
    """Pads a one-task batch with that task's collator and names the task in the batch."""

    def __init__(self, collators: dict[str, Callable]) -> None:
        self.collators = collators

    def __call__(self, rows: list[dict]) -> dict:
        names = {r[TASK_KEY] for r in rows}
        if len(names) != 1:
            raise ValueError(f"a multi-task batch must hold one task's rows, got {names}")
        name = names.pop()
        batch = self.collators[name]([{k: v for k, v in r.items() if k != TASK_KEY} for r in rows])
        batch[TASK_KEY] = name
        return batch


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Batches of global indices into a ``MultiTaskDataset``, one task per batch, tasks drawn
    by the rule. The order depends only on (seed, epoch), so ``--resume`` replays it."""

    def __init__(
        self,
        lengths: dict[str, list[int]],
        offsets: dict[str, int],
        batch_size: int,
        rule: SamplingRule,
        temperature: float,
        seed: int,
    ) -> None:
        self.names = list(lengths)
        self.offsets = offsets
        self.rule = rule
        self.seed = seed
        self.epoch = 0
        self.samplers = {
            n: LengthGroupedBatchSampler(lengths[n], batch_size, seed + 1000 * k)
            for k, n in enumerate(self.names)
        }
        self.probabilities = task_probabilities(
            {n: len(v) for n, v in lengths.items()}, rule, temperature
        )
        self.num_batches = sum(len(s) for s in self.samplers.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def task_order(self) -> list[str]:
        """Which task each batch of this epoch comes from."""
        if self.rule == "round-robin":
            start = self.epoch * self.num_batches
            return [self.names[(start + i) % len(self.names)] for i in range(self.num_batches)]
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        p = np.array([self.probabilities[n] for n in self.names])
        picks = rng.choice(len(self.names), size=self.num_batches, p=p)
        return [self.names[i] for i in picks]

    def _batches(self, name: str) -> Iterator[list[int]]:
        """Endless seeded passes over one task's rows (a new shuffle each pass)."""
        sampler, passes = self.samplers[name], 0
        while True:
            sampler.set_epoch(self.epoch * 1000 + passes)
            yield from sampler.batches()
            passes += 1

    def __iter__(self) -> Iterator[list[int]]:
        streams = {n: self._batches(n) for n in self.names}
        for name in self.task_order():
            yield [self.offsets[name] + i for i in next(streams[name])]
