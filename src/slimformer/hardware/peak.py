"""The machine's measured matmul peak per precision, so a variant's speed can be stated as a
fraction of what this CPU can do (its FLOPs / time over the peak measured in the same run)."""

import time

import torch

PRECISIONS = ("fp32", "bf16", "int8")


def _operands(precision: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if precision == "int8":
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g)
        return a, torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)


def matmul_peak(precision: str, n: int = 1024, repeats: int = 20) -> float:
    """Best-of-``repeats`` GFLOP/s (GOP/s for int8) of an n x n x n matmul at the current threads.
    int8 uses ``torch._int_mm`` (int8 x int8 -> int32), the kernel that reaches VNNI/AMX."""
    a, b = _operands(precision, n)
    op = torch._int_mm if precision == "int8" else torch.mm
    for _ in range(2):
        op(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        op(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure_peaks(precisions: tuple[str, ...] = PRECISIONS, n: int = 1024) -> dict[str, float]:
    return {p: round(matmul_peak(p, n), 1) for p in precisions}
