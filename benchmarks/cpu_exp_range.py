"""torch's CPU exp by input range: below about -87 (where the result is a denormal or 0) it
leaves its vector path. Why exp of log-probabilities with masked entries (finfo.min) is slow
(issue 3, docs/benchmarks.md).

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
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, exp over {SHAPE} fp32 values")
    for value in (-20.0, -80.0, -88.0, -95.0, -110.0, -1e4, torch.finfo(torch.float32).min):
        x = torch.full(SHAPE, value)
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            ms = median_ms(x.exp)
            print(f"exp({value:g}), flush_denormal={flush}: {ms:.3f} ms")
    torch.set_flush_denormal(False)


if __name__ == "__main__":
    main()
