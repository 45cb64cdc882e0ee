"""Dropout masks from fewer random draws on CPU.

PyTorch's CPU dropout draws one Bernoulli sample per element. Where it uses its serial Mersenne
Twister (this project's AMD EPYC: ~10 ns an element, 3.1-3.3 ms for a 32 x 26 x 384 bf16
tensor) the masks of one training step of a 3-layer MiniLM student (~3 M elements at batch
32 x 26 tokens) took ~30 ms of a ~200 ms bf16 step. Here each 64-bit draw of the same generator
gives four 15-bit uniform values and an element is kept when its value is >= round(p * 2**15):
Bernoulli(1 - p) masks as before (p rounded to a multiple of 1/32768), seeded by
``torch.manual_seed`` like torch's own, in ~40% of the time there (1.2-1.4 ms for that tensor).
On Intel CPUs torch may draw them with MKL's parallel generator instead, which can be faster:
``auto`` times both once per process and keeps the faster. Eval-mode calls and tensors off the
CPU go to torch's dropout unchanged.
"""

import functools
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F

log = logging.getLogger("slimformer")

RESOLUTION = 1 << 15  # 15 bits per value: four values per 63-bit draw
_torch_dropout = F.dropout
FastDropout = bool | Literal["auto"]


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A bool mask of ``shape``, each element True (kept) with probability 1 - p."""
    n = math.prod(shape)
    # random_() on int64 gives 63 uniform bits: the low 15 of each 16-bit quarter are uniform
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()
    values = words.view(torch.int16)[:n].view(shape) & (RESOLUTION - 1)
    return values >= round(p * RESOLUTION)


def dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with the masks of ``keep_mask`` on CPU."""
    if not training or not 0 < p < 1 or input.device.type != "cpu" or not input.is_floating_point():
        return _torch_dropout(input, p, training, inplace)
    mask = keep_mask(input.shape, p)
    kept = input.mul_(mask) if inplace else input.mul(mask)
    return kept.mul_(1.0 / (1.0 - p))


@functools.cache
def masks_are_faster(numel: int = 1 << 20, repeats: int = 5) -> bool:
    """Whether ``dropout`` beats torch's on this CPU (best of ``repeats`` on a bf16 tensor of
    ``numel`` elements; ~25 ms once per process). The global RNG state is left as it was."""
    x = torch.ones(numel, dtype=torch.bfloat16)
    best = {}
    with torch.random.fork_rng(devices=[]):
        for name, fn in (("slimformer", dropout), ("torch", _torch_dropout)):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(x, 0.1, True)
                times.append(time.perf_counter() - start)
            best[name] = min(times)
    faster = best["slimformer"] < best["torch"]
    log.info(
        "dropout masks on CPU: %s's (best of %d on %d elements: %.2f ms, the other %.2f ms)",
        "slimformer" if faster else "torch",
        repeats,
        numel,
        1000 * min(best.values()),
        1000 * max(best.values()),
    )
    return faster


@contextmanager
def fast_cpu_dropout(enabled: FastDropout = "auto") -> Iterator[bool]:
    """Within the block every ``nn.Dropout`` and ``F.dropout`` call (Hugging Face's attention
    dropout included) draws its masks with ``keep_mask``; torch's is put back afterwards.
    ``auto``: only where that measured faster. Yields whether the switch is on."""
    if enabled == "auto":
        enabled = masks_are_faster()
    if not enabled or F.dropout is dropout:  # off, or an outer block already switched it
        yield enabled
        return
    F.dropout = dropout
    try:
        yield True
    finally:
        F.dropout = _torch_dropout
