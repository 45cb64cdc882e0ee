"""Attention KL (MiniLM): KL(teacher || student) between the attention distributions of each
head and each real query row, padding keys excluded from the softmax."""

from functools import partial

import torch

from slimformer.methods.distill.losses.attention_from_projections import attention_term
from slimformer.methods.distill.losses.base import LAYER_LOSSES, LayerLoss, masked_mean
from slimformer.utils.fast_softmax import log_softmax


def attention_distribution_kl(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    keys = mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    neg = torch.finfo(torch.float32).min
    log_s = log_softmax(student.float().masked_fill(~keys, neg), -1)
    log_t = log_softmax(teacher.float().masked_fill(~keys, neg), -1)
    per_key = log_t.exp() * (log_t - log_s)
    per_row = per_key.masked_fill(~keys, 0.0).sum(-1)  # (B, h, L)
    rows = mask.bool()[:, None, :].expand_as(per_row)
    return masked_mean(per_row, rows)


LAYER_LOSSES.register("attention_kl")(
    LayerLoss(
        "attention",
        attention_distribution_kl,
        from_projections=partial(attention_term, "kl"),
        attention_kind="kl",
    )
)
