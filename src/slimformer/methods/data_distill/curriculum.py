"""Easy-to-hard training order (curriculum) by the teacher's confidence.

Examples are ranked from most to least confident. A pacing function g(progress) in (0, 1] gives
the share of that ranking the sampler may draw from at each point of training: linear, root
(faster start) or step (phases). Within the allowed share, order is shuffled (seeded). Random
order over all data stays the default; this is the comparison the benchmark reports."""

import math

import numpy as np

from slimformer.errors import RecipeError

PACINGS = ("linear", "root", "step")


def pacing(name: str, progress: float, start: float = 0.3, phases: int = 3) -> float:
    """Share of the easy-to-hard ranking available at ``progress`` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if name == "linear":
        return start + (1 - start) * p
    if name == "root":
        return start + (1 - start) * math.sqrt(p)
    if name == "step":
        return start + (1 - start) * min(1.0, math.floor(p * phases + 1e-9) / max(phases - 1, 1))
    raise RecipeError(f"Unknown pacing {name!r}; known: {', '.join(PACINGS)}.")


def easy_to_hard(confidence: np.ndarray) -> np.ndarray:
    """Indices from most to least confident (stable for ties)."""
    return np.argsort(-confidence, kind="stable")


def curriculum_order(
    confidence: np.ndarray,
    num_batches: int,
    batch_size: int,
    pace: str = "linear",
    start: float = 0.3,
    seed: int = 0,
    lengths: np.ndarray | None = None,
    group: int = 16,
) -> list[list[int]]:
    """``num_batches`` batches of indices. Every ``group`` batches draw together (without
    repeats until the pool is used up) from the easiest pacing(b / num_batches) share of the
    data; with ``lengths``, the group is sorted by length before it is cut into batches (as the
    loop's default sampler does), so batches carry little padding, and the batches of a group
    come in shuffled order."""
    n = len(confidence)
    ranking = easy_to_hard(confidence)
    rng = np.random.default_rng(seed)
    used = np.zeros(n, dtype=bool)
    batches: list[list[int]] = []
    while len(batches) < num_batches:
        b = len(batches)
        share = pacing(pace, b / max(num_batches - 1, 1), start)
        allowed = ranking[: min(n, max(batch_size, math.ceil(share * n)))]
        fresh = allowed[~used[allowed]]
        if len(fresh) < batch_size:  # the allowed pool is used up: start it over
            used[allowed] = False
            fresh = allowed
        k = max(1, min(group, num_batches - b, len(fresh) // batch_size))
        pick = rng.choice(fresh, size=min(len(fresh), k * batch_size), replace=False)
        used[pick] = True
        if lengths is not None:
            pick = pick[np.argsort(-np.asarray(lengths)[pick], kind="stable")]
        chunk = [pick[i : i + batch_size].tolist() for i in range(0, len(pick), batch_size)]
        rng.shuffle(chunk)
        batches += chunk[: num_batches - b]
    return [[int(i) for i in batch] for batch in batches]


class CurriculumBatchSampler:
    """Batch sampler for the training loop: the whole run (all epochs) follows one pacing
    schedule, so progress = global batch / total batches. Same interface as the loop's
    length-grouped sampler (``set_epoch``, ``len``), and seeded: --resume replays it."""

    def __init__(
        self,
        confidence: np.ndarray,
        batch_size: int,
        epochs: float,
        pace: str = "linear",
        start: float = 0.3,
        seed: int = 0,
        lengths: np.ndarray | None = None,
    ) -> None:
        self.per_epoch = math.ceil(len(confidence) / batch_size)
        total = max(1, math.ceil(epochs * self.per_epoch))
        self.all_batches = curriculum_order(
            confidence, total, batch_size, pace, start, seed, lengths
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        lo = self.epoch * self.per_epoch
        return iter(self.all_batches[lo : lo + self.per_epoch])

    def __len__(self) -> int:
        return self.per_epoch
