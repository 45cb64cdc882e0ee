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


def folder_flops(folder, auto_class, seq_len: int = 64) -> int | None:
    """FLOPs per example of the architecture in ``folder`` (PyTorch, ONNX or compiled variant:
    the arithmetic is the config's, pruned shapes included), or None if it cannot be built."""
    from transformers import AutoConfig

    from slimformer.models.prune import PLAN_ATTR, is_pruned, shape_like_plan

    try:
        config = AutoConfig.from_pretrained(folder)
        model = auto_class.from_config(config)
        if is_pruned(config):
            shape_like_plan(model, getattr(config, PLAN_ATTR))
        return flops_per_example(model.eval(), seq_len)
    except Exception:  # noqa: BLE001  (a FLOP count must never fail a report)
        return None
