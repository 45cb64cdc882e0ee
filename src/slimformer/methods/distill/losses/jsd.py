"""Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024):

    m = beta * p + (1 - beta) * q,   JSD_beta = beta * KL(p || m) + (1 - beta) * KL(q || m)

with p the teacher and q the student; beta (``soft_options: {beta: ...}``, default 0.5) moves
it between forward-KL-like (small beta) and reverse-KL-like (large beta) behaviour."""

import math

import torch

from slimformer.methods.distill.losses.base import SOFT_LOSSES, masked_mean
from slimformer.methods.distill.losses.token_support import distributions, kl_rows


@SOFT_LOSSES.register("jsd")
def generalized_jsd(
    student: torch.Tensor, teacher, mask: torch.Tensor, temperature: float = 1.0, beta=0.5
):
    if not 0 < beta < 1:
        raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
    log_p, log_q = distributions(student, teacher, temperature)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), 0)
    per_position = beta * kl_rows(log_p, log_m) + (1 - beta) * kl_rows(log_q, log_m)
    return temperature**2 * masked_mean(per_position, mask)
