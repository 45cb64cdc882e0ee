"""Fake quantization for quantization-aware training (QAT), with the arithmetic of ONNX
Runtime's static INT8 (QDQ, U8 activations / S8 weights), so the accuracy the student reaches
in training is that of the INT8 ONNX model it exports to (up to values that land on a rounding
tie after the small float differences between the two runtimes: 99.9-100% prediction agreement
on SST-2 dev).

What is quantized, as ORT quantizes it (``onnxruntime/quantization/quant_utils.compute_scale_zp``):
- a Linear's input: uint8, asymmetric, per tensor, from a calibrated [min, max] that always
  includes 0: scale = (max - min) / 255, zero point = round(-min / scale);
- a Linear's weight: int8, symmetric, [-127, 127], scale = max|w| / 127, per tensor or per
  output channel, from the current weights (so the grid follows the weights as they train);
- an embedding table (ORT's quantized Gather): uint8, asymmetric, from the table's own min/max.

Gradients pass through the rounding unchanged inside the range (the straight-through
estimator). Activation ranges are calibrated once and then fixed, as in NVIDIA's
calibrate-then-fine-tune QAT: the ranges do not depend on which checkpoint is kept, and the
export reuses them exactly. Only a quantized Linear's input is rounded; the other readers of
the same tensor (a residual connection) see it in full precision, in the INT8 graph too.

The fake quantization is a replacement ``forward`` on the module instance: the model's
parameters, state dict and ``save_pretrained`` folder stay those of the plain model.
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

ACT_QMIN, ACT_QMAX = 0, 255  # uint8 activations
W_QMAX = 127  # int8 weights, symmetric [-127, 127]


def activation_qparams(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 asymmetric (scale, zero_point) of a [low, high] range, as ORT computes them."""
    low = torch.clamp(low.float(), max=0.0)
    high = torch.clamp(high.float(), min=0.0)
    scale = (high - low) / float(ACT_QMAX - ACT_QMIN)
    tiny = scale < torch.finfo(torch.float32).tiny
    scale = torch.where(tiny, torch.ones_like(scale), scale)
    zero_point = torch.where(tiny, torch.zeros_like(low), torch.round(ACT_QMIN - low / scale))
    return scale, zero_point.to(torch.int32)


def weight_scale(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """int8 symmetric scale: per output row of a Linear weight (out, in), or one for all."""
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1) if per_channel else w.abs().max()
    scale = (2 * absmax) / float(2 * W_QMAX)
    return torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)


def _fake_quant(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """quantize -> dequantize with ORT's arithmetic (x / scale, round half to even, saturate;
    torch's own fake_quantize multiplies by 1/scale, which rounds differently at the ties).
    Straight-through gradient inside the range, none where the value saturates."""
    q = torch.round(x / scale) + zero_point
    inside = (q >= qmin) & (q <= qmax)
    y = (torch.clamp(q, qmin, qmax) - zero_point) * scale
    return torch.where(inside, x + (y - x).detach(), y.detach())


def fake_quant_activation(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    scale, zero_point = activation_qparams(low, high)
    return _fake_quant(x, scale.to(x.dtype), zero_point.to(x.dtype), ACT_QMIN, ACT_QMAX)


def fake_quant_weight(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    scale = weight_scale(weight, per_channel).to(weight.device, weight.dtype)
    if per_channel:
        scale = scale[:, None]  # (out, 1): one scale per output row
    return _fake_quant(weight, scale, 0.0, -W_QMAX, W_QMAX)


def fake_quant_table(table: torch.Tensor) -> torch.Tensor:
    """An embedding table as ORT's Gather quantization stores it (uint8 from its min/max)."""
    return fake_quant_activation(table, table.detach().min(), table.detach().max())


class ActivationRanges:
    """[min, max] of each quantized Linear's input, by module name (floats, JSON-ready)."""

    def __init__(self, ranges: dict[str, tuple[float, float]] | None = None) -> None:
        self.ranges = dict(ranges or {})

    def observe(self, name: str, x: torch.Tensor) -> None:
        low, high = float(x.detach().min()), float(x.detach().max())
        if name in self.ranges:
            old_low, old_high = self.ranges[name]
            low, high = min(low, old_low), max(high, old_high)
        self.ranges[name] = (low, high)

    def tensors(self, name: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.ranges[name]
        return torch.tensor(low, device=device), torch.tensor(high, device=device)


@torch.inference_mode()
def calibrate_ranges(
    model: nn.Module, linear_names: list[str], batches: Iterable[dict], forward
) -> ActivationRanges:
    """MinMax of every listed Linear's input over ``batches`` (one pass, fp32 model), the
    ranges ORT's MinMax calibration finds on the same data. ``forward(model, batch)``."""
    ranges = ActivationRanges()
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: ranges.observe(name, args[0])
        )
        for name in linear_names
    ]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    missing = [n for n in linear_names if n not in ranges.ranges]
    if missing:
        raise ValueError(f"calibration never reached these layers: {', '.join(missing[:5])}")
    return ranges


def _linear_forward(module: nn.Linear, name: str, ranges: ActivationRanges, per_channel: bool):
    def forward(x: torch.Tensor) -> torch.Tensor:
        low, high = ranges.tensors(name, x.device)
        weight = fake_quant_weight(module.weight, per_channel)
        return F.linear(fake_quant_activation(x, low, high), weight, module.bias)

    return forward


def _embedding_forward(module: nn.Embedding):
    def forward(ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, fake_quant_table(module.weight), module.padding_idx)

    return forward


@contextmanager
def fake_quantized(
    model: nn.Module,
    linear_names: list[str],
    embedding_names: list[str],
    ranges: ActivationRanges,
    per_channel: bool = False,
) -> Iterator[nn.Module]:
    """``model`` with fake-quantized Linears and embedding tables inside the block; the plain
    forwards come back on exit (also after an error)."""
    patched = []
    try:
        for name in linear_names:
            module = model.get_submodule(name)
            if not isinstance(module, nn.Linear):
                raise TypeError(f"{name} is a {type(module).__name__}, not a Linear")
            module.forward = _linear_forward(module, name, ranges, per_channel)
            patched.append(module)
        for name in embedding_names:
            module = model.get_submodule(name)
            if not isinstance(module, nn.Embedding):
                raise TypeError(f"{name} is a {type(module).__name__}, not an Embedding")
            module.forward = _embedding_forward(module)
            patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward  # the class's forward again
