"""Forward hooks that keep what the layer-wise losses compare: the embedding output, block
outputs, and the attention query/key projections (scores are rebuilt from q and k, so this
works with any attention kernel, SDPA included, and yields the scores before softmax)."""

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from slimformer.errors import ModelError
from slimformer.methods.distill.losses.attention_from_projections import split_heads
from slimformer.models.arch import arch_of, find_module, layers_module_name


class Recorder:
    """Records while active only, so evaluation and other forwards cost nothing extra."""

    def __init__(
        self, model: PreTrainedModel, hidden: Iterable[int], attention: Iterable[int]
    ) -> None:
        spec = arch_of(model.config)
        blocks = model.get_submodule(layers_module_name(model))
        self.active = False
        self.hidden: dict[int, torch.Tensor] = {}
        self.query: dict[int, torch.Tensor] = {}
        self.key: dict[int, torch.Tensor] = {}
        self._handles = []
        for index in sorted(set(hidden)):
            module = find_module(model, spec.embeddings) if index == 0 else blocks[index - 1]
            self._hook(module, self.hidden, index)
        attention = sorted(set(attention))
        if attention and (spec.query is None or spec.key is None):
            raise ModelError(
                f"Attention distillation is not available for the {model.config.model_type!r} "
                f"family (its scores are not q.k alone); drop the attention terms."
            )
        for index in attention:
            block = blocks[index - 1]
            self._hook(block.get_submodule(spec.query), self.query, index)
            self._hook(block.get_submodule(spec.key), self.key, index)

    def _hook(self, module: nn.Module, store: dict, index: int) -> None:
        def keep(_module, _inputs, output):
            if self.active:
                store[index] = output[0] if isinstance(output, tuple) else output

        self._handles.append(module.register_forward_hook(keep))

    @contextmanager
    def record(self) -> Iterator["Recorder"]:
        self.hidden.clear()
        self.query.clear()
        self.key.clear()
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def attention_scores(query: torch.Tensor, key: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, W) query and key projections -> (B, heads, L, L) scores q.k / sqrt(W / heads),
    in fp32 whatever the forward ran in (bf16 autocast records bf16 projections)."""
    b, length, _ = query.shape
    q, k = split_heads(query, heads, torch.float32), split_heads(key, heads, torch.float32)
    return (q @ k.mT / math.sqrt(q.shape[-1])).view(b, heads, length, length)
