"""Measure one variant in this process (so its peak memory is its own) and print JSON:
metric on the eval data (first round only), latency samples per (batch size, seq length),
size, params, FLOPs, peak RSS. Run by ``bench.runner``:

  python -m slimformer.bench.worker '{"folder": ..., "data": {...}, ...}'
"""

import json
import resource
import sys
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM of the address space, which starts
    fresh at exec (``ru_maxrss`` would carry over the parent's peak from fork)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(job: dict) -> dict:
    from slimformer.eval.flops import folder_flops
    from slimformer.eval.latency import latency_inputs
    from slimformer.eval.predict import labels_of
    from slimformer.eval.variants import load_variant
    from slimformer.pipeline.context import build_context
    from slimformer.pipeline.recipe import parse_recipe

    torch.set_num_threads(job["threads"])
    folder = Path(job["folder"])
    tree = {
        "task": "sequence-classification",
        "student": {"model": str(folder)},
        "data": job["data"],
        "stages": [{"finetune": {}}],
    }
    ctx = build_context(parse_recipe(tree, "<bench>"))
    t0 = time.perf_counter()
    variant = load_variant(folder, ctx.task)
    out: dict = {"load_seconds": round(time.perf_counter() - t0, 2)}
    samples = {}
    for seq in job["seq_lens"]:
        for batch in job["batch_sizes"]:
            feed = latency_inputs(variant.vocab_size, batch, seq)
            for _ in range(job["warmup"]):
                variant.run(feed)
            times = []
            for _ in range(job["repeats"]):
                t = time.perf_counter()
                variant.run(feed)
                times.append((time.perf_counter() - t) * 1000)
            samples[f"bs{batch}_seq{seq}"] = times
    # Peak memory of loading and serving this variant, read before the eval pass and the FLOP
    # count (which builds an fp32 copy of the architecture) add their own.
    out["peak_rss_mb"] = peak_rss_mb()
    out["latency_samples_ms"] = samples
    if job["with_metrics"]:
        values = variant.predict(ctx.eval_ds, ctx.collate)
        out["metrics"] = ctx.task.metrics(values, labels_of(ctx.eval_ds), None)
    out.update(
        runtime=variant.runtime,
        precision=variant.spec.precision if variant.spec else "fp32",
        params=variant.params,
        size_mb=round(variant.size_mb, 3),
        flops_per_example={
            s: folder_flops(folder, ctx.task.auto_class, s) for s in job["seq_lens"]
        },
    )
    return out


if __name__ == "__main__":
    result = measure(json.loads(sys.argv[1]))
    print("SLIMFORMER_BENCH_RESULT " + json.dumps(result))
