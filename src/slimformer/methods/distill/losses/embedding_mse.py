"""Embedding-output MSE (TinyBERT): the embedding layer's output (the first hidden state),
projected to the teacher's width, against the teacher's; padding excluded."""

from slimformer.methods.distill.losses.base import LAYER_LOSSES, LayerLoss
from slimformer.methods.distill.losses.hidden_mse import token_mse

LAYER_LOSSES.register("embedding_mse")(LayerLoss("embeddings", token_mse))
