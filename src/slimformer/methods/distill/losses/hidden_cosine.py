"""Cosine hidden loss (DistilBERT's L_cos): 1 - cos(student, teacher) per token, so only the
direction of the state is matched, not its scale."""

import torch
import torch.nn.functional as F

from slimformer.methods.distill.losses.base import LAYER_LOSSES, LayerLoss, masked_mean


def token_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_token = 1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)  # (B, L)
    return masked_mean(per_token, mask)


LAYER_LOSSES.register("hidden_cosine")(LayerLoss("hidden", token_cosine))
