"""Attention-score MSE (TinyBERT): the raw scores q.k / sqrt(d) per head, before softmax,
compared over real (query, key) pairs only (TinyBERT zeroes the masked ones; excluding them
gives the same gradient without padding diluting the mean)."""

from functools import partial

import torch

from slimformer.methods.distill.losses.attention_from_projections import (
    attention_term,
    pair_mask,
)
from slimformer.methods.distill.losses.base import LAYER_LOSSES, LayerLoss, masked_mean


def attention_score_mse(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    per_pair = (student.float() - teacher.float()).pow(2)  # (B, h, L, L)
    return masked_mean(per_pair, pair_mask(mask).expand_as(per_pair))


LAYER_LOSSES.register("attention_mse")(
    LayerLoss(
        "attention",
        attention_score_mse,
        from_projections=partial(attention_term, "mse"),
        attention_kind="mse",
    )
)
