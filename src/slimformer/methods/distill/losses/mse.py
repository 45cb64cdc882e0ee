"""Mean squared error: on logits for regression KD (soft), against gold scores (hard), and
on embeddings for task-agnostic distillation. Temperature does not apply."""

import torch

from slimformer.methods.distill.losses.base import HARD_LOSSES, SOFT_LOSSES, masked_mean


@SOFT_LOSSES.register("mse")
def soft_mse(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    per_position = (student.float() - teacher.float()).pow(2).mean(-1)  # (N,)
    return masked_mean(per_position, mask)


@HARD_LOSSES.register("mse")
def hard_mse(student: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """NaN labels (teacher-labeled rows without a gold score) are left out."""
    labels = labels.float()
    known = ~torch.isnan(labels)
    target = torch.where(known, labels, torch.zeros_like(labels))
    per_position = (student.float().reshape(labels.shape[0], -1)[:, 0] - target).pow(2)
    return masked_mean(per_position, mask & known)
