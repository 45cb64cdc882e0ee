"""The Python API: the same verbs as the CLI (``run``, ``distill``, ``finetune``, ``eval``).

Each verb builds or loads a recipe and hands it to the pipeline, so every path writes the same
run folder and report.
"""

import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from slimformer.errors import RecipeError
from slimformer.pipeline.recipe import load_recipe, parse_recipe, set_by_path

log = logging.getLogger("slimformer")


def run(
    recipe: str | Path | dict,
    output: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    cache_dir: str | None = None,
) -> dict:
    """Run a recipe (YAML path or dict) into the run folder ``output``; returns report.json."""
    from slimformer.pipeline.runner import run_recipe

    if isinstance(recipe, dict):
        tree = dict(recipe)
        for item in overrides or []:
            key, _, raw = item.partition("=")
            set_by_path(tree, key, yaml.safe_load(raw))
        cfg = parse_recipe(tree)
    else:
        cfg = load_recipe(recipe, overrides)
    return run_recipe(cfg, output, resume=resume, overwrite=overwrite, cache_dir=cache_dir)


def _data_tree(
    train: str,
    eval: str | None,
    text_column: str,
    text_pair_column: str | None,
    label_column: str,
    max_length: int,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "train": train,
        "text_column": text_column,
        "label_column": label_column,
        "max_length": max_length,
    }
    if eval:
        data["eval"] = eval
    if text_pair_column:
        data["text_pair_column"] = text_pair_column
    return data


def distill(
    teacher: str,
    train: str,
    output: str | Path,
    eval: str | None = None,
    layers: int | list[int] | None = 3,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    max_length: int = 128,
    epochs: float = 3.0,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    temperature: float = 2.0,
    alpha: float = 0.5,
    student_model: str | None = None,
    seed: int = 0,
    task: str = "sequence-classification",
    **kw: Any,
) -> dict:
    """Distill a classification teacher (sequence or token) into a smaller student (plain KD)."""
    student = {"model": student_model} if student_model else {"layers": layers}
    recipe = {
        "task": task,
        "seed": seed,
        "teacher": {"model": teacher},
        "student": student,
        "data": _data_tree(train, eval, text_column, text_pair_column, label_column, max_length),
        "stages": [
            {
                "distill": {
                    "epochs": epochs,
                    "batch_size": batch_size,
                    "learning_rate": learning_rate,
                    "temperature": temperature,
                    "alpha": alpha,
                }
            }
        ],
    }
    return run(recipe, output, **kw)


def finetune(
    model: str,
    train: str,
    output: str | Path,
    eval: str | None = None,
    labels: list[str] | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    max_length: int = 128,
    epochs: float = 3.0,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    seed: int = 0,
    task: str = "sequence-classification",
    **kw: Any,
) -> dict:
    """Fine-tune a pretrained backbone (e.g. to make a teacher) on labeled data."""
    recipe = {
        "task": task,
        "seed": seed,
        "student": {"model": model},
        "data": _data_tree(train, eval, text_column, text_pair_column, label_column, max_length),
        "stages": [
            {
                "finetune": {
                    "epochs": epochs,
                    "batch_size": batch_size,
                    "learning_rate": learning_rate,
                }
            }
        ],
    }
    if labels:
        recipe["labels"] = labels
    return run(recipe, output, **kw)


def _ship_recipe(
    model: str,
    data: str,
    stage: dict,
    train: str | None,
    text_column: str,
    text_pair_column: str | None,
    label_column: str,
    max_length: int,
    teacher: str | None,
) -> dict:
    recipe = {
        "task": "sequence-classification",
        "student": {"model": model},
        "data": {
            **_data_tree(
                train or data, data, text_column, text_pair_column, label_column, max_length
            )
        },
        "stages": [stage],
    }
    if teacher:
        recipe["teacher"] = {"model": teacher}
    return recipe


def export(
    model: str,
    data: str,
    output: str | Path,
    opset: int = 17,
    optimize: bool = True,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    max_length: int = 128,
    teacher: str | None = None,
    **kw: Any,
) -> dict:
    """Export a model folder to ONNX (+ ORT fusions), parity-checked on ``data``."""
    stage = {"export": {"opset": opset, "optimize": optimize}}
    recipe = _ship_recipe(
        model, data, stage, None, text_column, text_pair_column, label_column, max_length, teacher
    )
    return run(recipe, output, **kw)


def export_task(model: str | Path, task: str, output: str | Path) -> Path:
    """One task of a multi-task model folder as a standard ``transformers`` folder (encoder +
    that task's head + tokenizer) that ``AutoModelFor*`` and ``pipeline()`` load."""
    from slimformer.models.multitask import export_task as _export

    return _export(model, task, output)


def quantize(
    model: str,
    data: str,
    output: str | Path,
    method: str = "dynamic",
    per_channel: bool = False,
    calibration: str = "minmax",
    calibration_examples: int = 500,
    calibration_data: str | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    max_length: int = 128,
    teacher: str | None = None,
    keep_fp32_within: float | None = None,
    qat_steps: int | None = None,
    **kw: Any,
) -> dict:
    """INT8 with ONNX Runtime: dynamic, static calibrated on ``calibration_data``, or ``qat``
    (quantization-aware training on ``calibration_data`` with KD from ``teacher``, by default
    the model itself). ``keep_fp32_within``: measure each layer's cost and keep the costliest
    in FP32 until the drop on held-out training rows is within that many points."""
    if method == "qat":
        if keep_fp32_within is not None:
            raise RecipeError("keep_fp32_within applies to dynamic/static quantization, not qat")
        settings = {"per_channel": per_channel, "calibration_examples": calibration_examples}
        if qat_steps is not None:
            settings["max_steps"] = qat_steps
        stage = {"qat": settings}
        teacher = teacher or model
    else:
        settings = {
            "method": method,
            "per_channel": per_channel,
            "calibration": calibration,
            "calibration_examples": calibration_examples,
        }
        if keep_fp32_within is not None:
            settings["sensitivity"] = {"max_drop": keep_fp32_within}
        stage = {"quantize": settings}
    recipe = _ship_recipe(
        model,
        data,
        stage,
        calibration_data,
        text_column,
        text_pair_column,
        label_column,
        max_length,
        teacher,
    )
    return run(recipe, output, **kw)


def optimize(
    model: str,
    data: str,
    output: str | Path,
    max_drop: float = 0.5,
    batch_sizes: list[int] | None = None,
    choose_by: str = "geomean",
    threads: list[int] | None = None,
    candidates: list[str] | None = None,
    calibration_examples: int = 500,
    calibration_data: str | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    max_length: int = 128,
    **kw: Any,
) -> dict:
    """The fastest deployment of ``model`` on this CPU whose metric on ``data`` drops at most
    ``max_drop`` points; the report compares it with the same model in PyTorch fp32."""
    stage = {
        "optimize": {
            "max_drop": max_drop,
            "batch_sizes": batch_sizes or [1, 32],
            "choose_by": choose_by,
            "threads": threads,
            "candidates": candidates,
            "calibration_examples": calibration_examples,
        }
    }
    recipe = _ship_recipe(
        model,
        data,
        stage,
        calibration_data,
        text_column,
        text_pair_column,
        label_column,
        max_length,
        model,
    )
    recipe["report"] = {"batch_sizes": batch_sizes or [1, 32]}
    return run(recipe, output, **kw)


def bench(
    models: list[str],
    data: str,
    output: str | Path,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    seq_lens: list[int] | None = None,
    rounds: int = 2,
    repeats: int = 10,
    expand: bool = False,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    max_length: int = 128,
    max_examples: int | None = None,
) -> dict:
    """Every variant side by side (each in its own process, rounds interleaved): metric,
    latency p50/p95/p99 per batch size and sequence length, throughput, size, peak RSS, params,
    FLOPs. Sequence lengths default to the eval data's median and 95th percentile."""
    from slimformer.bench.runner import bench as run_bench
    from slimformer.bench.runner import expand as expand_variants
    from slimformer.bench.runner import resolve_variants, seq_lens_of
    from slimformer.pipeline.context import build_context

    data_tree = _data_tree(data, data, text_column, text_pair_column, label_column, max_length)
    data_tree |= {"max_eval_examples": max_examples, "max_train_examples": 1}
    first = next(iter(resolve_variants(models).values()))
    tree = {"student": {"model": str(first)}, "data": data_tree, "stages": [{"finetune": {}}]}
    ctx = build_context(parse_recipe(tree, "<bench>"))
    lens = seq_lens or seq_lens_of([len(x) for x in ctx.eval_ds["input_ids"]], max_length)
    output = Path(output)
    refs = list(models) + (expand_variants(models, ctx, output) if expand else [])
    return run_bench(refs, data_tree, output, list(batch_sizes), lens, rounds, repeats)


def eval(
    model: str,
    data: str,
    teacher: str | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    max_length: int = 128,
    max_examples: int | None = None,
    batch_sizes: tuple[int, ...] = (1, 32),
    seq_len: int = 64,
) -> dict:
    """Metrics, size and latency of a model folder (PyTorch or ONNX), and of a teacher beside it
    with the speedup."""
    from slimformer.eval.latency import measure_latency
    from slimformer.eval.variants import load_variant
    from slimformer.models.loading import check_model_ref
    from slimformer.pipeline.context import build_context
    from slimformer.pipeline.report import entry, machine_info

    data_tree = _data_tree(data, data, text_column, text_pair_column, label_column, max_length)
    tree = {
        "task": "sequence-classification",
        "student": {"model": model},
        "data": {**data_tree, "max_eval_examples": max_examples, "max_train_examples": 1},
        "stages": [{"finetune": {}}],
    }
    if teacher:
        tree["teacher"] = {"model": teacher}
    ctx = build_context(parse_recipe(tree, "<eval>"))
    labels = np.asarray(ctx.eval_ds["labels"])
    variants = {"model": load_variant(Path(check_model_ref(model)), ctx.task)}
    if teacher:
        variants["teacher"] = load_variant(Path(ctx.teacher_ref), ctx.task)
    values = {k: v.predict(ctx.eval_ds, ctx.collate) for k, v in variants.items()}
    reference = values.get("teacher")
    latency = measure_latency(
        {k: (v.run, v.vocab_size) for k, v in variants.items()}, batch_sizes, seq_len
    )
    out = {
        k: entry(
            model if k == "model" else teacher,
            v,
            ctx.task.metrics(values[k], labels, reference),
            latency[k],
            ctx.task.auto_class,
            seq_len,
        )
        for k, v in variants.items()
    }
    if teacher:
        out["speedup"] = {
            k: round(latency["teacher"][k] / latency["model"][k], 3) for k in latency["model"]
        }
    out["machine"] = machine_info()
    return out
