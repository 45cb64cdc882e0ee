"""Token-level reverse KL, KL(student || teacher) (MiniLLM, Gu et al. 2024): mode-seeking, so
a small student puts its mass on the teacher's main modes instead of spreading it thin."""

import torch

from slimformer.methods.distill.losses.base import SOFT_LOSSES, masked_mean
from slimformer.methods.distill.losses.token_support import distributions, kl_rows


@SOFT_LOSSES.register("reverse_kl")
def reverse_kl(student: torch.Tensor, teacher, mask: torch.Tensor, temperature: float = 1.0):
    log_p, log_q = distributions(student, teacher, temperature)
    return temperature**2 * masked_mean(kl_rows(log_q, log_p), mask)
