"""Which units to keep, given importance scores and a target fraction to remove.

Every layer keeps the same share of its units (the top-scored ones), which keeps the shapes
regular (fast kernels) and never empties a layer by accident."""

import math

import torch

from slimformer.errors import RecipeError


def check_fraction(name: str, fraction: float) -> None:
    if not 0 <= fraction < 1:
        raise RecipeError(
            f"prune.{name} = {fraction} is the fraction of units to remove and must be in "
            f"[0, 1) (0.5 removes half). To remove whole layers use prune.layers."
        )


def keep_count(original: int, fraction: float) -> int:
    return max(1, original - math.floor(original * fraction + 1e-9))


def keep_top(
    scores: list[torch.Tensor], originals: list[int], fraction: float, what: str
) -> dict[int, list[int]]:
    """Per layer, the indices of the top ``keep_count(original, fraction)`` units by score
    (among the units the layer still has)."""
    check_fraction(what, fraction)
    keep = {}
    for layer, (s, original) in enumerate(zip(scores, originals, strict=True)):
        k = min(keep_count(original, fraction), len(s))  # never below one unit per layer
        keep[layer] = sorted(torch.topk(s, k).indices.tolist())
    return keep


def layers_to_drop(scores: list[float], count: int) -> list[int]:
    """The ``count`` layers whose removal raises the loss least."""
    if count >= len(scores):
        raise RecipeError(
            f"prune.layers = {count} would remove every layer of a {len(scores)}-layer model."
        )
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    return sorted(order[:count])
