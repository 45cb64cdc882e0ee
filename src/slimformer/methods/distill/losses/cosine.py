"""Cosine distance 1 - cos(s, t) per position: matches directions, ignores scale (useful for
embeddings compared by cosine similarity)."""

import torch
import torch.nn.functional as F

from slimformer.methods.distill.losses.base import SOFT_LOSSES, masked_mean


@SOFT_LOSSES.register("cosine")
def soft_cosine(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    per_position = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)  # (N,)
    return masked_mean(per_position, mask)
