"""Several teachers' soft labels combined into one target per example: fixed weights, or per
example by each teacher's confidence (its top probability), so the surer teacher counts more.
Teachers must share the label set (checked before any work)."""

import numpy as np

from slimformer.errors import RecipeError
from slimformer.methods.data_distill.selection import softmax


def check_label_sets(label_sets: list[list[str]], names: list[str]) -> None:
    first = label_sets[0]
    for labels, name in zip(label_sets[1:], names[1:], strict=True):
        if labels != first:
            raise RecipeError(
                f"Teacher {name} has labels {labels} but {names[0]} has {first}: teachers must "
                f"predict the same label set in the same order to be combined."
            )


def combine(
    logits_per_teacher: list[np.ndarray],
    weights: list[float] | None = None,
    mode: str = "fixed",
    temperature: float = 1.0,
) -> np.ndarray:
    """Combined targets as log-probabilities of the mixed distribution (times T): right for the
    KL soft loss (softmax of them is the mix); logit-matching losses (mse) see a shifted scale."""
    probs = [softmax(x, temperature) for x in logits_per_teacher]
    n = len(probs)
    if mode == "fixed":
        w = np.asarray(weights if weights is not None else [1.0] * n, dtype=np.float64)
        if len(w) != n or (w < 0).any() or w.sum() <= 0:
            raise RecipeError(f"teacher weights {weights} must be {n} non-negative numbers.")
        w = (w / w.sum())[:, None, None]
    elif mode == "confidence":
        conf = np.stack([p.max(-1) for p in probs])  # (teachers, N)
        w = (conf / conf.sum(0, keepdims=True))[:, :, None]
    else:
        raise RecipeError(f"Unknown multi-teacher mode {mode!r}; known: fixed, confidence.")
    mixed = (np.stack(probs) * w).sum(0)
    return np.log(np.clip(mixed, 1e-12, 1.0)) * temperature


class MultiTeacherTargets:
    """Several teachers' targets (each with its own cache) mixed per batch; the interface of
    ``TeacherTargets`` so every stage uses it unchanged."""

    def __init__(self, targets: list, weights: list[float], mode: str = "fixed") -> None:
        self.targets, self.weights, self.mode = targets, weights, mode
        self.cache = targets[0].cache  # for logging: the primary teacher's cache

    @property
    def teacher_examples(self) -> int:
        return sum(t.teacher_examples for t in self.targets)

    @property
    def cached_examples(self) -> int:
        return sum(t.cached_examples for t in self.targets)

    def __call__(self, batch: dict):
        import torch

        values = [t(batch).float() for t in self.targets]
        mixed = combine([v.cpu().numpy() for v in values], self.weights, self.mode)
        return torch.from_numpy(mixed.astype(np.float32)).to(values[0].device)

    def offer(self, batch: dict, values) -> None:
        """The primary teacher's outputs from a forward run elsewhere (see TeacherTargets)."""
        self.targets[0].offer(batch, values)

    def all_values(self, ds, collate, batch_size: int = 128) -> np.ndarray:
        values = [t.all_values(ds, collate, batch_size) for t in self.targets]
        return combine(values, self.weights, self.mode).astype(np.float32)
