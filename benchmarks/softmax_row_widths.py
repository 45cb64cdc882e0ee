"""torch's CPU softmax over attention-shaped rows, per dtype: plain, and padded with -inf to
the width slimformer's short-row softmax measures for that dtype (issue 3). Why bf16 rows are
padded to bf16's own width (32 values on AVX-512), not to fp32's (16).

    .venv/bin/python benchmarks/softmax_row_widths.py
"""

import time

import torch
import torch.nn.functional as F

LENGTHS = (10, 14, 16, 20, 26, 31, 32)


def forward_backward(x: torch.Tensor, grad: torch.Tensor, width: int) -> None:
    """Softmax over the last dimension, padded to ``width`` where it is shorter, and its
    gradient."""
    length = x.shape[-1]
    padded = F.pad(x, (0, width - length), value=float("-inf")) if length < width else x
    F.softmax(padded, -1)[..., :length].backward(grad)


def median_ms(x: torch.Tensor, grad: torch.Tensor, width: int, repeats: int = 30) -> float:
    for _ in range(5):
        forward_backward(x, grad, width)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        forward_backward(x, grad, width)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    from slimformer.hardware.cpu_features import cpu_name
    from slimformer.utils.fast_softmax import fast_width

    torch.set_num_threads(2)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}")
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        width = fast_width(dtype)
        name = str(dtype).removeprefix("torch.")
        print(f"{name}: measured fast width {width}")
        for length in LENGTHS:
            shape = (32, 12, length, length)  # batch 32, 12 heads
            x = torch.randn(shape, generator=g).to(dtype).requires_grad_()
            grad = torch.randn(shape, generator=g).to(dtype)
            plain, padded = median_ms(x, grad, 0), median_ms(x, grad, width)
            print(
                f"  (32, 12, {length}, {length}) forward + backward: torch's {plain:.2f} ms, "
                f"padded to {max(width, length)}: {padded:.2f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
