"""Hidden-state MSE (TinyBERT): the student's token states, projected to the teacher's width,
against the teacher's mapped layer; mean over hidden units, then over real tokens."""

import torch

from slimformer.methods.distill.losses.base import LAYER_LOSSES, LayerLoss, masked_mean


def token_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_token = (student.float() - teacher.float()).pow(2).mean(-1)  # (B, L)
    return masked_mean(per_token, mask)


LAYER_LOSSES.register("hidden_mse")(LayerLoss("hidden", token_mse))
