"""The Python API: the same verbs as the CLI (``run``, ``distill``, ``finetune``, ``eval``).

Each verb builds or loads a recipe and hands it to the pipeline, so every path writes the same
run folder and report.
"""

import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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
    **kw: Any,
) -> dict:
    """Distill a sequence-classification teacher into a smaller student (plain KD)."""
    student = {"model": student_model} if student_model else {"layers": layers}
    recipe = {
        "task": "sequence-classification",
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
    **kw: Any,
) -> dict:
    """Fine-tune a pretrained backbone (e.g. to make a teacher) on labeled data."""
    recipe = {
        "task": "sequence-classification",
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
    """Metrics, size and latency of a model (and of a teacher beside it, with speedup)."""
    from slimformer.eval.latency import measure_latency
    from slimformer.eval.predict import evaluate
    from slimformer.models.loading import check_model_ref
    from slimformer.pipeline.context import build_context, teacher_eval_values
    from slimformer.pipeline.report import machine_info, model_entry

    tree = {
        "task": "sequence-classification",
        "student": {"model": model},
        "data": {
            **_data_tree(data, data, text_column, text_pair_column, label_column, max_length),
            "max_eval_examples": max_examples,
            "max_train_examples": 1,
        },
        "stages": [{"finetune": {}}],
    }
    if teacher:
        tree["teacher"] = {"model": teacher}
    ctx = build_context(parse_recipe(tree, "<eval>"))
    student = ctx.task.load_model(check_model_ref(model)).eval()
    reference = teacher_eval_values(ctx) if teacher else None
    models = {"model": student} | ({"teacher": ctx.load_teacher()} if teacher else {})
    latency = measure_latency(models, batch_sizes, seq_len)
    labels = ctx.eval_ds["labels"]
    out = {
        "model": model_entry(
            model,
            student,
            Path(check_model_ref(model)),
            evaluate(student, ctx.task, ctx.eval_ds, ctx.collate, reference),
            latency["model"],
        )
    }
    if teacher:
        out["teacher"] = model_entry(
            teacher,
            models["teacher"],
            Path(ctx.teacher_ref),
            ctx.task.metrics(reference, np.asarray(labels), reference),
            latency["teacher"],
        )
        out["speedup"] = {
            k: round(latency["teacher"][k] / latency["model"][k], 3) for k in latency["model"]
        }
    out["machine"] = machine_info()
    return out
