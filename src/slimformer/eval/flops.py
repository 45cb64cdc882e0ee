"""Floating-point (or integer) operations of one forward pass, counted by PyTorch's own
FlopCounterMode on the fp32 model: the arithmetic a variant must do whatever runs it, so a
variant's speed can be stated against the machine's measured peak."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from slimformer.eval.latency import latency_inputs


def flops_per_example(model: torch.nn.Module, seq_len: int = 64) -> int:
    """Matmul/attention FLOPs of one example of ``seq_len`` tokens (elementwise ops not counted)."""
    feed = latency_inputs(model.config.vocab_size, 1, seq_len)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(**feed)
    return int(counter.get_total_flops())
