"""Try every deployment candidate this CPU supports, measure accuracy on the eval data and
latency at the named batch sizes (all candidates interleaved in one process, same threads and
warm-up), and keep the fastest within the accuracy tolerance. The table, the machine's measured
matmul peaks and the choice go into the report; the chosen folder loads as is."""

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slimformer.errors import RecipeError, SlimformerError
from slimformer.eval.flops import flops_per_example
from slimformer.eval.latency import latency_inputs, measure_latency
from slimformer.eval.predict import labels_of
from slimformer.eval.variants import Variant, load_variant
from slimformer.export.parity import parity
from slimformer.hardware.cpu_features import detect_cpu
from slimformer.hardware.peak import measure_peaks
from slimformer.optimize.build import build_candidate, export_fp32_onnx
from slimformer.optimize.candidates import BASELINE, Candidate, select_candidates
from slimformer.optimize.choose import Row, choose, drop_points
from slimformer.optimize.config import OptimizeConfig
from slimformer.tasks.base import Task

log = logging.getLogger("slimformer")


def _name(candidate: Candidate, threads: int, several: bool) -> str:
    return f"{candidate.name}@{threads}t" if several else candidate.name


def optimize_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    eval_ds: datasets.Dataset,
    calibration: datasets.Dataset,
    collate: Callable,
    cfg: OptimizeConfig,
    work_dir: Path,
) -> tuple[Path, dict]:
    """Build, measure and choose. Returns the chosen candidate's folder (under ``work_dir``)
    and the report section (table, peaks, CPU, choice)."""
    if task.name != "sequence-classification" or getattr(model.config, "num_labels", 2) < 2:
        raise RecipeError(
            "optimize compares candidates by classification accuracy; it supports "
            "sequence-classification models with 2+ labels (not regression or embeddings) yet."
        )
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and cfg.seq_len > max_pos:
        raise RecipeError(
            f"optimize.seq_len {cfg.seq_len} exceeds the model's {max_pos} positions."
        )
    cpu = detect_cpu()
    peaks_before = measure_peaks()
    candidates, skipped = select_candidates(cfg.candidates, cpu)
    # Threads are pinned in the saved folder only when the user asked for thread counts: a
    # folder optimized here may be served on a machine with more or fewer cores.
    thread_counts = cfg.threads or [None]
    several = len(thread_counts) > 1
    for name, reason in skipped.items():
        log.info("optimize: skipping %s (%s)", name, reason)
    model = model.float().eval()
    onnx_dir = work_dir / "onnx-fp32-export"

    def onnx_fp32() -> Path:
        if not (onnx_dir / "model.onnx").is_file():
            export_fp32_onnx(model, tokenizer, onnx_dir)
        return onnx_dir

    labels = labels_of(eval_ds)
    variants: dict[str, Variant] = {}
    rows: dict[str, dict] = {}
    baseline_values: np.ndarray | None = None
    for candidate in candidates:
        for threads in thread_counts:
            name = _name(candidate, threads, several)
            folder = work_dir / "candidates" / name
            t0 = time.perf_counter()
            try:
                if not (folder / "slimformer_runtime.json").is_file():
                    build_candidate(
                        candidate,
                        model,
                        tokenizer,
                        folder,
                        calibration,
                        collate,
                        cfg.calibration_examples,
                        onnx_fp32,
                        threads,
                    )
                variant = load_variant(folder, task)
                values = variant.predict(eval_ds, collate)
            except Exception as exc:  # noqa: BLE001  (one failing backend must not stop the rest)
                if candidate.name == BASELINE:
                    raise
                log.warning("optimize: %s failed: %s", name, exc)
                rows[name] = {"name": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
                continue
            if baseline_values is None:
                baseline_values = values
            metrics = task.metrics(values, labels, None)
            variants[name] = variant
            rows[name] = {
                "name": name,
                "runtime": candidate.runtime,
                "precision": candidate.precision,
                "quantization": candidate.quantization,
                "compiled": candidate.compiled,
                "threads": threads or torch.get_num_threads(),
                "metrics": metrics,
                "agreement_with_fp32": parity(baseline_values, values)["agreement"],
                "size_mb": round(variant.size_mb, 3),
                "build_and_eval_seconds": round(time.perf_counter() - t0, 1),
            }
            log.info("optimize: %s %s (%.0f s)", name, metrics, time.perf_counter() - t0)
    return _measure_and_choose(
        model, task, cfg, variants, rows, skipped, cpu, work_dir, peaks_before
    )


def _measure_and_choose(model, task, cfg, variants, rows, skipped, cpu, work_dir, peaks_before):
    base_name = next(iter(variants))
    log.info("optimize: measuring latency of %d candidates (interleaved)", len(variants))
    for name in list(variants):  # one shape each first: a candidate that cannot run them drops out
        try:
            for b in cfg.batch_sizes:
                variants[name].run(latency_inputs(variants[name].vocab_size, b, cfg.seq_len))
        except Exception as exc:  # noqa: BLE001
            if name == base_name:
                raise
            log.warning("optimize: %s failed at the latency shapes: %s", name, exc)
            rows[name] = {"name": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
            del variants[name]
    latency = measure_latency(
        {n: (v.run, v.vocab_size) for n, v in variants.items()},
        tuple(cfg.batch_sizes),
        cfg.seq_len,
        cfg.repeats,
    )
    # The peak is measured before and after, and the higher kept: a neighbour's load during one
    # measurement would otherwise inflate the fractions of peak.
    peaks = {k: max(v, peaks_before[k]) for k, v in measure_peaks().items()}
    flops = flops_per_example(model, cfg.seq_len)
    metric = task.primary_metric
    base = rows[next(iter(variants))]
    for name, lat in latency.items():
        row = rows[name]
        row["latency_ms"] = lat
        row["speedup"] = {
            k: round(base_lat / lat[k], 3) for k, base_lat in latency[base["name"]].items()
        }
        row["drop_points"] = drop_points(base["metrics"][metric], row["metrics"][metric])
        row["peak_fraction"] = {
            k: round(flops * int(k[2:]) / (ms / 1000) / 1e9 / peaks[row["precision"]], 3)
            for k, ms in lat.items()
        }
    choice = choose(
        [
            Row(n, rows[n]["metrics"][metric], rows[n]["latency_ms"], rows[n]["size_mb"])
            for n in variants
        ],
        base["name"],
        cfg.max_drop,
        cfg.choose_by,
    )
    log.info("optimize: chose %s (%s)", choice["name"], _summary_line(rows[choice["name"]]))
    info = {
        "choice": choice,
        "table": list(rows.values()),
        "skipped": skipped,
        "metric": metric,
        "flops_per_example": flops,
        "matmul_peak_gflops": peaks,
        "cpu": cpu.as_report(),
        "config": cfg.model_dump(),
    }
    return work_dir / "candidates" / choice["name"], info


def _summary_line(row: dict) -> str:
    return ", ".join(f"{k} {v} ms" for k, v in row["latency_ms"].items()) + f", {row['metrics']}"


def copy_choice(chosen: Path, out: Path) -> None:
    if not chosen.is_dir():
        raise SlimformerError(f"optimize: the chosen candidate folder {chosen} is missing.")
    shutil.copytree(chosen, out, dirs_exist_ok=True)
