"""report.json: teacher and student side by side, in one shape for every recipe.

Stable keys (later capabilities add keys, never rename these): ``teacher`` and ``student`` with
``metrics``, ``params``, ``size_mb``, ``latency_ms`` {bs1, bs32}; top-level ``speedup``.
"""

import platform
from pathlib import Path

import torch
from transformers import PreTrainedModel

from slimformer.eval.latency import count_params, measure_latency
from slimformer.models.loading import size_on_disk_mb
from slimformer.utils.cpu import cpu_name


def machine_info() -> dict:
    return {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def model_entry(
    ref: str, model: PreTrainedModel, folder: Path, metrics: dict, latency: dict
) -> dict:
    return {
        "model": ref,
        "metrics": metrics,
        "params": count_params(model),
        "size_mb": round(size_on_disk_mb(folder), 3),
        "latency_ms": latency,
    }


def build_report(
    task: str,
    teacher: tuple | None,
    student: tuple,
    stages: list[dict],
    batch_sizes: list[int],
    seq_len: int,
    repeats: int,
) -> dict:
    """``teacher``/``student`` = (ref, model, folder, metrics); latency measured here."""
    models = {"student": student[1]} | ({"teacher": teacher[1]} if teacher else {})
    latency = measure_latency(models, tuple(batch_sizes), seq_len, repeats)
    report = {"task": task}
    report["teacher"] = model_entry(*teacher, latency["teacher"]) if teacher else None
    report["student"] = model_entry(*student, latency["student"])
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
