"""Token-level forward KL, KL(teacher || student): the student covers every mode of the
teacher (the standard LLM KD term; Hinton et al. 2015 applied per position). Takes dense
teacher logits or the cached top-k (see ``token_support``)."""

import torch

from slimformer.methods.distill.losses.base import SOFT_LOSSES, masked_mean
from slimformer.methods.distill.losses.token_support import distributions, kl_rows


@SOFT_LOSSES.register("forward_kl")
def forward_kl(student: torch.Tensor, teacher, mask: torch.Tensor, temperature: float = 1.0):
    log_p, log_q = distributions(student, teacher, temperature)
    return temperature**2 * masked_mean(kl_rows(log_p, log_q), mask)
