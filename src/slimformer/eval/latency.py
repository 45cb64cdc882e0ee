"""Latency at fixed shapes, measured in one process with the runs interleaved so machine noise
hits every variant alike. Median of repeats; inputs are full-length (no padding)."""

import statistics
import time
from collections.abc import Callable

import torch
from transformers import PreTrainedModel

Runner = Callable[[dict[str, torch.Tensor]], object]


def latency_inputs(vocab_size: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def measure_latency(
    runners: dict[str, tuple[Runner, int]],
    batch_sizes: tuple[int, ...] = (1, 32),
    seq_len: int = 64,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, dict[str, float]]:
    """``runners``: name -> (forward callable, vocab size). Returns ``{name: {"bs1": ms}}``."""
    times = {n: {b: [] for b in batch_sizes} for n in runners}
    for b in batch_sizes:
        feeds = {n: latency_inputs(vocab, b, seq_len) for n, (_, vocab) in runners.items()}
        for n, (run, _) in runners.items():
            for _ in range(warmup):
                run(feeds[n])
        for _ in range(repeats):
            for n, (run, _) in runners.items():
                t0 = time.perf_counter()
                run(feeds[n])
                times[n][b].append((time.perf_counter() - t0) * 1000)
    return {
        n: {f"bs{b}": round(statistics.median(v), 3) for b, v in per.items()}
        for n, per in times.items()
    }


def count_params(model: PreTrainedModel) -> int:
    """Parameters; for an exported graph, whose weights are constants, its floating buffers."""
    n = sum(p.numel() for p in model.parameters())
    return n or sum(b.numel() for b in model.buffers() if b.is_floating_point())
