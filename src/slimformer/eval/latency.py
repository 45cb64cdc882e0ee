"""Latency of models at fixed shapes, measured in one process with the runs interleaved, so
machine noise hits every model alike. Median of repeats; inputs are full-length (no padding)."""

import statistics
import time

import torch
from transformers import PreTrainedModel


def _inputs(model: PreTrainedModel, batch: int, seq: int) -> dict[str, torch.Tensor]:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.inference_mode()
def measure_latency(
    models: dict[str, PreTrainedModel],
    batch_sizes: tuple[int, ...] = (1, 32),
    seq_len: int = 64,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, dict[str, float]]:
    """``{name: {"bs1": ms, "bs32": ms}}`` median over ``repeats`` interleaved rounds."""
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batch_sizes} for n in models}
    for m in models.values():
        m.eval()
    for b in batch_sizes:
        feeds = {n: _inputs(m, b, seq_len) for n, m in models.items()}
        for n, m in models.items():
            for _ in range(warmup):
                m(**feeds[n])
        for _ in range(repeats):
            for n, m in models.items():
                t0 = time.perf_counter()
                m(**feeds[n])
                times[n][b].append((time.perf_counter() - t0) * 1000)
    return {
        n: {f"bs{b}": round(statistics.median(v), 3) for b, v in per.items()}
        for n, per in times.items()
    }


def count_params(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())
