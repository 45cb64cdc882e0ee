"""Hard-label cross-entropy on the student's logits (the 'hard' half of KD's alpha mix)."""

import torch
import torch.nn.functional as F

from slimformer.methods.distill.losses.base import HARD_LOSSES, masked_mean


@HARD_LOSSES.register("ce")
def hard_cross_entropy(
    student: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    safe = labels.long().clamp(min=0)  # ignored positions (-100) are masked out anyway
    per_position = F.cross_entropy(student.float(), safe, reduction="none")  # (N,)
    return masked_mean(per_position, mask & (labels >= 0))
