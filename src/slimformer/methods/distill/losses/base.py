"""Loss registries and the masked mean they share."""

from collections.abc import Callable

import torch

from slimformer.registry import Registry

# soft(student (N, D), teacher (N, D), mask (N,), temperature) -> scalar
SoftLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
# hard(student (N, D), labels (N,), mask (N,)) -> scalar
HardLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SOFT_LOSSES: Registry[SoftLoss] = Registry("soft loss")
HARD_LOSSES: Registry[HardLoss] = Registry("hard loss")


def masked_mean(per_position: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions; 0 (with a gradient path) when there are none."""
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1.0)
