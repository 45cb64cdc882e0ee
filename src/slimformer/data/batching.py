"""Length-grouped, seeded batches: little padding, and the same order again on --resume."""

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffle, sort within mega-batches by length, cut into batches, shuffle the batches.

    The order depends only on (seed, epoch), so a resumed run replays the same batches.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        group_size: int = 50,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group = batch_size * group_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n)
        out = []
        for g in range(0, n, self.group):
            chunk = perm[g : g + self.group]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            out += [
                chunk[i : i + self.batch_size].tolist()
                for i in range(0, len(chunk), self.batch_size)
            ]
        rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class WholeRounds(Sampler[list[int]]):
    """A batch sampler cut to a multiple of ``processes`` batches, so that under
    ``accelerate launch`` every process gets the same number of batches each epoch (a process
    with one batch more would wait forever in its gradient all-reduce)."""

    def __init__(self, inner, processes: int) -> None:
        self.inner, self.processes = inner, processes

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.inner):
            if i >= len(self):
                return
            yield batch

    def __len__(self) -> int:
        return len(self.inner) - len(self.inner) % self.processes


def token_budget_batches(lengths: list[int], tokens: int, max_rows: int) -> list[list[int]]:
    """Positions longest first, cut into batches of at most ``tokens`` padded tokens (rows x
    the batch's longest row) and ``max_rows`` rows, one row at least: for inference passes,
    where larger, evenly long batches run faster per row than training's shuffled ones."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[list[int]] = []
    for pos in order.tolist():
        if batches:
            batch = batches[-1]
            longest = lengths[batch[0]]
            if len(batch) < max_rows and (len(batch) + 1) * longest <= tokens:
                batch.append(pos)
                continue
        batches.append([pos])
    return batches
