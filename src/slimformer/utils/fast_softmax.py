"""Softmax over short rows without torch's slow CPU path.

PyTorch's CPU softmax/log-softmax vectorises along the last dimension only when it holds at
least one vector of values; shorter rows take a scalar path. On this project's AMD EPYC
(AVX-512: 16 floats a vector) a (32, 12, 14, 14) fp32 attention softmax took 0.68 ms (~9 ns a
value) where (32, 12, 16, 16) took 0.07 ms, and SST-2 batches are mostly under 16 tokens.
Padding the rows with -inf up to that width gives the same values (the padding gets weight 0)
in a fraction of the time, gradient included (0.25 against 1.03 ms forward + backward at 14).
The width depends on the dtype: a bf16 vector holds twice as many values, and on this
project's Intel Xeon (AMX) bf16 rows under 32 values were slow (forward + backward over
(32, 12, 26, 26): 1.3 ms, against 0.4 ms padded to 32; benchmarks/softmax_row_widths.py), which
bf16 autocast's eager attention runs into. So the width where the fast path starts is
measured once per process and dtype, not assumed from the CPU.
"""

import functools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

log = logging.getLogger("slimformer")

_torch_softmax = F.softmax
_torch_log_softmax = F.log_softmax
CANDIDATE_WIDTHS = (8, 16, 32)
SLOW_PATH_RATIO = 3.0  # per-value time at width - 1 over width that marks the scalar path


def _time_per_value(width: int, dtype: torch.dtype, rows: int = 3072, repeats: int = 5) -> float:
    x = torch.randn(rows, width).to(dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _torch_softmax(x, -1)
        best = min(best, time.perf_counter() - start)
    return best / x.numel()


@functools.cache
def fast_width(dtype: torch.dtype = torch.float32) -> int:
    """The smallest row length at which torch's CPU softmax over ``dtype`` is vectorised,
    where it has a slower path below it (0 where no such step is found: nothing is padded).
    ~5 ms once per dtype."""
    with torch.random.fork_rng(devices=[]):
        for width in CANDIDATE_WIDTHS:
            below, at = _time_per_value(width - 1, dtype), _time_per_value(width, dtype)
            if below > SLOW_PATH_RATIO * at:
                log.info(
                    "softmax on CPU: %s rows under %d values are padded to %d (%.1f ns a "
                    "value at %d, %.1f at %d)",
                    str(dtype).removeprefix("torch."),
                    width,
                    width,
                    below * 1e9,
                    width - 1,
                    at * 1e9,
                    width,
                )
                return width
    return 0


def _padded(fn, input: torch.Tensor, dim, kwargs) -> torch.Tensor | None:
    """``fn`` over the last dimension padded with -inf to the fast width, sliced back; None
    where padding does not apply (another dimension, a long row, not on CPU)."""
    if dim is None or input.device.type != "cpu" or not input.is_floating_point():
        return None
    if input.dim() == 0 or dim not in (-1, input.dim() - 1):
        return None
    dtype = kwargs.get("dtype") or input.dtype  # torch converts to it before the softmax
    if not dtype.is_floating_point:  # torch's own call gives the error
        return None
    length, width = input.shape[-1], fast_width(dtype)
    if not 0 < length < width:
        return None
    padded = F.pad(input, (0, width - length), value=float("-inf"))
    return fn(padded, -1, **kwargs)[..., :length]


def softmax(input: torch.Tensor, dim=None, _stacklevel: int = 3, dtype=None) -> torch.Tensor:
    """``torch.nn.functional.softmax``, short last-dimension rows padded on CPU."""
    out = _padded(_torch_softmax, input, dim, {"dtype": dtype})
    return out if out is not None else _torch_softmax(input, dim, _stacklevel, dtype)


def log_softmax(input: torch.Tensor, dim=None, _stacklevel: int = 3, dtype=None) -> torch.Tensor:
    """``torch.nn.functional.log_softmax``, short last-dimension rows padded on CPU."""
    out = _padded(_torch_log_softmax, input, dim, {"dtype": dtype})
    return out if out is not None else _torch_log_softmax(input, dim, _stacklevel, dtype)


TRAINING_DTYPES = (torch.float32, torch.bfloat16)  # fp32, and bf16 autocast's attention


@contextmanager
def fast_cpu_softmax() -> Iterator[bool]:
    """Within the block ``F.softmax``/``F.log_softmax`` (Hugging Face's eager attention
    included) pad short rows as above; torch's are put back afterwards. Yields whether the
    switch is on (off where no slow path was measured for fp32 or bf16)."""
    gains = any(fast_width(dtype) for dtype in TRAINING_DTYPES)
    if not gains or F.softmax is softmax:  # nothing to gain, or already switched
        yield gains
        return
    F.softmax, F.log_softmax = softmax, log_softmax
    try:
        yield True
    finally:
        F.softmax, F.log_softmax = _torch_softmax, _torch_log_softmax
