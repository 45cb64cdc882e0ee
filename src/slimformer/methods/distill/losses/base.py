"""Loss registries and the masked mean they share."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from slimformer.registry import Registry

# soft(student (N, D), teacher (N, D), mask (N,), temperature) -> scalar
SoftLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
# hard(student (N, D), labels (N,), mask (N,)) -> scalar
HardLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SOFT_LOSSES: Registry[SoftLoss] = Registry("soft loss")
HARD_LOSSES: Registry[HardLoss] = Registry("hard loss")


@dataclass(frozen=True)
class LayerLoss:
    """A layer-wise (intermediate) term. ``needs`` says what it compares:

    - ``embeddings`` / ``hidden``: token states (B, L, H), student already projected to the
      teacher's width, with the token mask (B, L);
    - ``attention``: attention scores (B, heads, L, L) before softmax, with the token mask (B, L).
    """

    needs: Literal["embeddings", "hidden", "attention"]
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    # attention terms: the same values for all mapped layers at once, from stacked query/key
    # projections: (q_s, k_s, q_t, k_t, heads, mask) -> one value per layer (faster; see
    # attention_from_projections.py). None: the layers go through ``fn`` one by one.
    from_projections: Callable[..., torch.Tensor] | None = None
    # with ``from_projections``: the fused term's kind (kl / mse), whose teacher side the
    # layer-wise state cache can keep as computed (attention_from_projections.teacher_side)
    attention_kind: Literal["kl", "mse"] | None = None


LAYER_LOSSES: Registry[LayerLoss] = Registry("layer-wise term")


def masked_mean(per_position: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions; 0 (with a gradient path) when there are none."""
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1.0)
