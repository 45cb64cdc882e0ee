"""torch's CPU exp by input range: below about -87 (where the result is a denormal or 0) it
leaves its vector path. Why exp of log-probabilities with masked entries (finfo.min) is slow
(issue 3, docs/benchmarks.md). And why what that exp gives the padding keys must be zeroed
before it is scaled: batched matmuls over denormal values are many times slower.

    .venv/bin/python benchmarks/cpu_exp_range.py
"""

import time

import torch

SHAPE = (3, 32, 12, 14, 14)  # the attention term's probabilities at 14 tokens


def median_ms(fn, repeats: int = 100) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    from slimformer.hardware.cpu_features import cpu_name

    torch.set_num_threads(2)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}")
    # first, and without set_flush_denormal: in trials after that setting had been switched
    # on and off, the denormal case ran as fast as 0 (not explained)
    length = 59  # the attention term's gradient, 3 layers x 32 rows x 12 heads, half padding
    gradient = torch.rand(3 * 32 * 12, length, length) * 1e-4
    keys = torch.randn(3 * 32 * 12, length, 32)
    for name, padding_value in (("0", 0.0), ("1e-42 (denormal)", 1e-42)):
        g = gradient.clone()
        g[..., length // 2 :] = padding_value
        ms = median_ms(lambda g=g: torch.bmm(g, keys), repeats=10)
        print(f"bmm {tuple(g.shape)} @ {tuple(keys.shape)}, padding keys {name}: {ms:.2f} ms")
    print(f"exp over {SHAPE} fp32 values")
    for value in (-20.0, -80.0, -88.0, -95.0, -110.0, -1e4, torch.finfo(torch.float32).min):
        x = torch.full(SHAPE, value)
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            ms = median_ms(x.exp)
            print(f"exp({value:g}), flush_denormal={flush}: {ms:.3f} ms")
    torch.set_flush_denormal(False)


if __name__ == "__main__":
    main()
