"""Hard-label cross-entropy on the student's logits (the 'hard' half of KD's alpha mix), from
the log-normaliser and the gold logit only (no full log-softmax: LLM vocabularies are large)."""

import torch

from slimformer.methods.distill.losses.base import HARD_LOSSES, masked_mean
from slimformer.methods.distill.losses.picked_log_probs import picked_log_probs


@HARD_LOSSES.register("ce")
def hard_cross_entropy(
    student: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    safe = labels.long().clamp(min=0)  # ignored positions (-100) are masked out anyway
    per_position = -picked_log_probs(student, safe[:, None]).squeeze(-1)  # (N,)
    return masked_mean(per_position, mask & (labels >= 0))
