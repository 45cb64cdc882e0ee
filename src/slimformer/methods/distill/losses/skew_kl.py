"""Skew KL (DistiLLM, Ko et al. 2024): KL(p || a * p + (1 - a) * q), teacher p, student q.
Mixing a little of the teacher into the student's side keeps the loss and its gradient
bounded where the student gives a teacher token almost no mass; ``soft_options: {skew: a}``
(default 0.1; a = 0 is forward KL)."""

import math

import torch

from slimformer.methods.distill.losses.base import SOFT_LOSSES, masked_mean
from slimformer.methods.distill.losses.token_support import distributions, kl_rows


@SOFT_LOSSES.register("skew_kl")
def skew_kl(student: torch.Tensor, teacher, mask: torch.Tensor, temperature: float = 1.0, skew=0.1):
    if not 0 <= skew < 1:
        raise ValueError(f"skew_kl skew must be in [0, 1), got {skew}")
    log_p, log_q = distributions(student, teacher, temperature)
    if skew == 0:
        log_mix = log_q
    else:
        log_mix = torch.logsumexp(
            torch.stack([log_p + math.log(skew), log_q + math.log(1 - skew)]), 0
        )
    return temperature**2 * masked_mean(kl_rows(log_p, log_mix), mask)
