"""KD loss terms. Soft terms compare student and teacher outputs; hard terms compare the student
with gold labels. All take aligned tensors (N, D) and a mask (N,) and know nothing about tasks.
Layer-wise terms (``LAYER_LOSSES``) compare token states or attention scores inside the models.

Adding a term = one file here with one ``@SOFT_LOSSES.register`` / ``@HARD_LOSSES.register``.
"""

from slimformer.methods.distill.losses import (  # noqa: F401  (register)
    attention_kl,
    attention_mse,
    ce,
    cosine,
    embedding_mse,
    forward_kl,
    hidden_cosine,
    hidden_mse,
    jsd,
    kl,
    mse,
    reverse_kl,
    rkd,
    skew_kl,
)
from slimformer.methods.distill.losses.base import (
    HARD_LOSSES,
    LAYER_LOSSES,
    SOFT_LOSSES,
    LayerLoss,
    masked_mean,
)

__all__ = ["HARD_LOSSES", "LAYER_LOSSES", "SOFT_LOSSES", "LayerLoss", "masked_mean"]
