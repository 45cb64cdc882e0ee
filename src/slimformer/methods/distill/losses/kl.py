"""Soft-target KD (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network").

    L = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

The T^2 factor keeps gradient magnitudes comparable across temperatures, so alpha means the
same thing whatever T is.
"""

import torch
import torch.nn.functional as F

from slimformer.methods.distill.losses.base import SOFT_LOSSES, masked_mean


@SOFT_LOSSES.register("kl")
def soft_target_kl(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    log_p_s = F.log_softmax(student.float() / temperature, dim=-1)  # (N, C)
    log_p_t = F.log_softmax(teacher.float() / temperature, dim=-1)  # (N, C)
    per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (N,)
    return temperature**2 * masked_mean(per_position, mask)
