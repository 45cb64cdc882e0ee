"""KD loss terms. Soft terms compare student and teacher outputs; hard terms compare the student
with gold labels. All take aligned tensors (N, D) and a mask (N,) and know nothing about tasks.

Adding a term = one file here with one ``@SOFT_LOSSES.register`` / ``@HARD_LOSSES.register``.
"""

from slimformer.methods.distill.losses import ce, cosine, kl, mse, rkd  # noqa: F401  (register)
from slimformer.methods.distill.losses.base import HARD_LOSSES, SOFT_LOSSES, masked_mean

__all__ = ["HARD_LOSSES", "SOFT_LOSSES", "masked_mean"]
