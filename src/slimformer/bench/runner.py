"""Benchmark variants side by side: each measured in its own process (honest memory), the
same threads and warm-up for all, rounds interleaved (variant A, B, C, A, B, C...) so machine
noise hits every variant alike; latency percentiles pooled over the rounds. Writes
bench.json, bench.md and report.html into the output folder."""

import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from slimformer.errors import SlimformerError
from slimformer.hardware.cpu_features import detect_cpu
from slimformer.reporting.html import render_html, table_markdown
from slimformer.utils.atomic import write_text_atomic

log = logging.getLogger("slimformer")
MARK = "SLIMFORMER_BENCH_RESULT "


def resolve_variants(refs: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` or ``PATH``; a run folder stands for its ``model/``."""
    out = {}
    for ref in refs:
        name, _, path = ref.rpartition("=")
        folder = Path(path)
        if (folder / "report.json").is_file() and (folder / "model").is_dir():
            folder = folder / "model"
        if not (folder / "config.json").is_file():
            raise SlimformerError(
                f"bench: {path} is not a model folder (no config.json) nor a run folder "
                f"(report.json + model/). Give folders written by save_pretrained or slimformer."
            )
        name = name or (folder.parent.name if folder.name == "model" else folder.name)
        if name in out:
            name = f"{name}-{len(out)}"
        out[name] = folder
    return out


def seq_lens_of(lengths: list[int], max_length: int) -> list[int]:
    """Median and 95th-percentile token counts of the eval data, rounded up to a multiple of 8."""
    picks = {int(np.percentile(lengths, 50)), int(np.percentile(lengths, 95))}
    return sorted({min(max_length, -(-p // 8) * 8) for p in picks})


def _run_worker(job: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "slimformer.bench.worker", json.dumps(job)],
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise SlimformerError(
        f"bench: measuring {job['folder']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def _percentiles(samples: list[float]) -> dict[str, float]:
    q = np.percentile(samples, [50, 95, 99])
    return {
        "p50": round(float(q[0]), 3),
        "p95": round(float(q[1]), 3),
        "p99": round(float(q[2]), 3),
    }


def expand(refs: list[str], data_ctx, out: Path) -> list[str]:
    """For each plain PyTorch folder, add its PyTorch INT8, ONNX Runtime FP32 and INT8 forms."""
    from slimformer.export.torch_runtime import read_runtime_spec
    from slimformer.optimize.build import build_candidate, export_fp32_onnx
    from slimformer.optimize.candidates import BY_NAME

    extra = []
    for name, folder in resolve_variants(refs).items():
        if read_runtime_spec(folder) or (folder / "model.onnx").is_file():
            continue
        model = data_ctx.task.load_model(str(folder))
        tokenizer = data_ctx.tokenizer.from_pretrained(folder)
        onnx_dir = out / "variants" / f"{name}-onnx-fp32"
        for cand in ("pytorch-int8-dynamic", "onnxruntime-fp32", "onnxruntime-int8-dynamic"):
            target = out / "variants" / f"{name}-{cand.replace('pytorch-', 'pt-')}"
            if not (target / "slimformer_runtime.json").is_file():
                build_candidate(
                    BY_NAME[cand],
                    model,
                    tokenizer,
                    target,
                    data_ctx.eval_ds,
                    data_ctx.collate,
                    100,
                    lambda m=model, t=tokenizer, d=onnx_dir: _onnx(m, t, d, export_fp32_onnx),
                )
            extra.append(f"{target.name}={target}")
    return extra


def _onnx(model, tokenizer, folder: Path, export) -> Path:
    if not (folder / "model.onnx").is_file():
        export(model, tokenizer, folder)
    return folder


def bench(
    refs: list[str],
    data: dict,
    output: Path,
    batch_sizes: list[int],
    seq_lens: list[int],
    rounds: int = 2,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
) -> dict:
    variants = resolve_variants(refs)
    threads = threads or torch.get_num_threads()
    raw: dict[str, list[dict]] = {n: [] for n in variants}
    for r in range(rounds):
        for name, folder in variants.items():
            log.info("bench round %d/%d: %s", r + 1, rounds, name)
            job = {
                "folder": str(folder),
                "data": data,
                "batch_sizes": batch_sizes,
                "seq_lens": seq_lens,
                "repeats": repeats,
                "warmup": warmup,
                "threads": threads,
                "with_metrics": r == 0,
            }
            raw[name].append(_run_worker(job))
    rows = [_row(name, results, batch_sizes, seq_lens) for name, results in raw.items()]
    metric = next(iter(rows[0]["metrics"]))
    result = {
        "variants": rows,
        "metric": metric,
        "setup": {
            "rounds": rounds,
            "repeats": repeats,
            "warmup": warmup,
            "threads": threads,
            "batch_sizes": batch_sizes,
            "seq_lens": seq_lens,
            "statistic": "percentiles of all rounds' samples",
        },
        "machine": {"cpu": detect_cpu().as_report(), "torch": torch.__version__},
    }
    _write(result, output, batch_sizes, seq_lens)
    return result


def _row(name: str, results: list[dict], batch_sizes: list[int], seq_lens: list[int]) -> dict:
    first = results[0]
    latency = {}
    for key in first["latency_samples_ms"]:
        pooled = [t for r in results for t in r["latency_samples_ms"][key]]
        latency[key] = _percentiles(pooled)
    big, seq = max(batch_sizes), seq_lens[0]
    p50 = latency[f"bs{big}_seq{seq}"]["p50"]
    return {
        "name": name,
        "runtime": first["runtime"],
        "precision": first["precision"],
        "metrics": first["metrics"],
        "latency_ms": latency,
        "throughput_per_s": round(big / (p50 / 1000), 1),
        "size_mb": first["size_mb"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "params": first["params"],
        "flops_per_example": first["flops_per_example"],
        "load_seconds": statistics.median(r["load_seconds"] for r in results),
    }


def _flat(row: dict, metric: str, batch_sizes: list[int], seq_lens: list[int]) -> dict:
    flat = {
        "name": row["name"],
        "runtime": row["runtime"],
        "precision": row["precision"],
        metric: row["metrics"].get(metric),
    }
    for s in seq_lens:
        for b in batch_sizes:
            lat = row["latency_ms"][f"bs{b}_seq{s}"]
            flat[f"bs{b} seq{s} p50/p99 ms"] = f"{lat['p50']:.1f} / {lat['p99']:.1f}"
            flat[f"_bs{b}_seq{s}"] = lat["p50"]
    flat["throughput/s"] = row["throughput_per_s"]
    flat["size_mb"] = row["size_mb"]
    flat["peak_rss_mb"] = row["peak_rss_mb"]
    flat["params"] = row["params"]
    flat[f"GFLOP/ex seq{seq_lens[0]}"] = round(
        (
            row["flops_per_example"].get(str(seq_lens[0]))
            or row["flops_per_example"].get(seq_lens[0])
            or 0
        )
        / 1e9,
        3,
    )
    return flat


def _write(result: dict, output: Path, batch_sizes: list[int], seq_lens: list[int]) -> None:
    metric = result["metric"]
    flats = [_flat(r, metric, batch_sizes, seq_lens) for r in result["variants"]]
    columns = [c for c in flats[0] if not c.startswith("_")]
    key = f"_bs{max(batch_sizes)}_seq{seq_lens[0]}"
    for f in flats:
        f[f"latency bs{max(batch_sizes)} seq{seq_lens[0]}"] = f[key]
    md = table_markdown(flats, columns)
    page = render_html(
        "slimformer bench",
        flats,
        columns,
        metric,
        f"latency bs{max(batch_sizes)} seq{seq_lens[0]}",
        result["machine"],
    )
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "bench.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(output / "bench.md", md)
    write_text_atomic(output / "report.html", page)
    print(md)
