"""How much each attention head, FFN neuron and layer matters, measured on task data.

Heads and neurons use the same trick (Michel et al., 2019; Molchanov et al., 2017): a gate of
ones is multiplied into the unit's output, and |dLoss/dgate| summed over batches is the
first-order (Taylor) estimate of the loss change when the unit is removed. Head scores are
normalised per layer, as in Michel et al. FFN neurons can also be scored by weight magnitude
(no data needed). Layers are scored by the loss increase when each one is dropped."""

from collections.abc import Callable, Iterable

import torch
from transformers import PreTrainedModel

from slimformer.models.prune import blocks, drop_layers, head_size, prune_spec

LossFn = Callable[[PreTrainedModel, dict], torch.Tensor]


def _gate_hook(gate: torch.Tensor, group: int):
    """Forward pre-hook multiplying the input's last dim, in groups of ``group``, by ``gate``."""

    def hook(_module, args):
        (x, *rest) = args
        shape = x.shape
        gated = (x.view(*shape[:-1], -1, group) * gate[:, None]).view(shape)
        return (gated, *rest)

    return hook


def gradient_importance(
    model: PreTrainedModel, batches: Iterable[dict], loss_fn: LossFn
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(head scores per layer, FFN neuron scores per layer): accumulated |dL/dgate|."""
    spec, d = prune_spec(model.config), head_size(model.config)
    head_gates, ffn_gates, handles = [], [], []
    for block in blocks(model):
        attn_out, ffn_out = block.get_submodule(spec.attn_out), block.get_submodule(spec.ffn_out)
        hg = torch.ones(attn_out.in_features // d, requires_grad=True)
        fg = torch.ones(ffn_out.in_features, requires_grad=True)
        handles.append(attn_out.register_forward_pre_hook(_gate_hook(hg, d)))
        handles.append(ffn_out.register_forward_pre_hook(_gate_hook(fg, 1)))
        head_gates.append(hg)
        ffn_gates.append(fg)
    heads = [torch.zeros_like(g) for g in head_gates]
    ffn = [torch.zeros_like(g) for g in ffn_gates]
    was_training = model.training
    model.eval()  # no dropout: the scores are a property of the model, not of the noise
    try:
        for batch in batches:
            grads = torch.autograd.grad(loss_fn(model, batch), head_gates + ffn_gates)
            for i, g in enumerate(grads[: len(heads)]):
                heads[i] += g.abs()
            for i, g in enumerate(grads[len(heads) :]):
                ffn[i] += g.abs()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    heads = [h / (h.norm() + 1e-12) for h in heads]
    return heads, ffn


def magnitude_importance(model: PreTrainedModel) -> list[torch.Tensor]:
    """FFN neuron scores from weights only: |w_in row| * |w_out column| (L2 norms)."""
    spec = prune_spec(model.config)
    scores = []
    for block in blocks(model):
        w_out = block.get_submodule(spec.ffn_out).weight.detach()
        s = w_out.norm(dim=0)
        for name in spec.ffn_in:
            s = s * block.get_submodule(name).weight.detach().norm(dim=1)
        scores.append(s)
    return scores


@torch.no_grad()
def layer_importance(model: PreTrainedModel, batches: list[dict], loss_fn: LossFn) -> list[float]:
    """Loss increase when each layer alone is dropped (higher = more important)."""
    model.eval()
    base = sum(float(loss_fn(model, b)) for b in batches)
    out = []
    for i in range(len(blocks(model))):
        without = drop_layers(model, [i]).eval()
        out.append(sum(float(loss_fn(without, b)) for b in batches) - base)
    return out
