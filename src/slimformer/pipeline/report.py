"""report.json: teacher and student side by side, in one shape for every recipe.

Stable keys (later capabilities add keys, never rename these): ``teacher`` and ``student`` with
``metrics``, ``params``, ``flops_per_example``, ``size_mb``, ``latency_ms`` {bs1, bs32};
top-level ``speedup``.
"""

import platform

import torch

from slimformer.eval.flops import folder_flops
from slimformer.eval.latency import measure_latency
from slimformer.eval.variants import Variant
from slimformer.hardware.cpu_features import cpu_name, detect_cpu

Measured = tuple[str, Variant, dict]  # (reference shown in the report, variant, metrics)


def machine_info() -> dict:
    return {
        "cpu": cpu_name(),
        "cpu_features": detect_cpu().as_report(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def entry(
    ref: str, variant: Variant, metrics: dict, latency: dict, auto_class, seq_len: int
) -> dict:
    return {
        "model": ref,
        "runtime": variant.runtime,
        "metrics": metrics,
        "params": variant.params,
        "flops_per_example": folder_flops(variant.folder, auto_class, seq_len),
        "size_mb": round(variant.size_mb, 3),
        "latency_ms": latency,
    }


def build_report(
    task: str,
    teacher: Measured | None,
    student: Measured,
    stages: list[dict],
    batch_sizes: list[int],
    seq_len: int,
    repeats: int,
    auto_class=None,
) -> dict:
    """Latency of teacher and student measured here, interleaved in this process.
    ``flops_per_example`` (at ``seq_len``) is counted on the architecture of each folder."""
    measured = {"student": student} | ({"teacher": teacher} if teacher else {})
    latency = measure_latency(
        {k: (v[1].run, v[1].vocab_size) for k, v in measured.items()},
        tuple(batch_sizes),
        seq_len,
        repeats,
    )
    report = {
        "task": task,
        "teacher": entry(*teacher, latency["teacher"], auto_class, seq_len) if teacher else None,
        "student": entry(*student, latency["student"], auto_class, seq_len),
    }
    report["speedup"] = (
        {k: round(latency["teacher"][k] / latency["student"][k], 3) for k in latency["student"]}
        if teacher
        else None
    )
    report["latency_setup"] = {
        "seq_len": seq_len,
        "repeats": repeats,
        "statistic": "median",
        "threads": torch.get_num_threads(),
    }
    report["stages"] = stages
    report["machine"] = machine_info()
    return report
