"""report.json for a causal-LM run: perplexity and top-1 agreement on held-out text, greedy
agreement on held-out prompts, generation speed, size; teacher and student side by side.

Same top-level shape as every report (``teacher``/``student`` with ``metrics``, ``params``,
``size_mb``; ``speedup``), with LLM keys: ``metrics.perplexity``, ``non_embedding_params``,
``generation`` (tokens/s, time to first token), ``speedup.generate_bs1``,
``perplexity_ratio`` (student / teacher).
"""

import logging
from pathlib import Path

import numpy as np
import torch

from slimformer.eval.generation import agreement, generation_speed, greedy
from slimformer.eval.predict import predict
from slimformer.models.loading import size_on_disk_mb
from slimformer.pipeline.context import RunContext, teacher_eval_values
from slimformer.pipeline.report import machine_info
from slimformer.tasks.causal_lm import non_embedding_params

log = logging.getLogger("slimformer")


def held_out_prompts(ctx: RunContext, n: int, length: int) -> torch.Tensor:
    """(n, length) prompts: the first tokens of the first n eval windows."""
    ids = ctx.eval_ds.select(range(min(n, len(ctx.eval_ds))))["input_ids"]
    return torch.tensor([row[:length] for row in ids], dtype=torch.long)


def model_entry(ref: str, model, folder: Path | None, metrics: dict) -> dict:
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": ref,
        "runtime": "pytorch",
        "metrics": metrics,
        "params": params,
        "non_embedding_params": non_embedding_params(model),
        "layers": int(model.config.num_hidden_layers),
        "size_mb": round(size_on_disk_mb(folder), 3) if folder and folder.is_dir() else None,
        "weights_mb_fp32": round(params * 4 / 2**20, 3),
    }


def causal_lm_report(ctx: RunContext, model_dir: Path, stages: list[dict]) -> dict:
    gen = ctx.recipe.report.generation
    student = ctx.task.load_model(str(model_dir)).eval()
    teacher = ctx.load_teacher().eval()
    reference = teacher_eval_values(ctx, sync=False)
    teacher_metrics = ctx.task.metrics(reference, None, None)
    values = predict(student, ctx.task, ctx.eval_ds, ctx.collate, desc="student perplexity")
    student_metrics = ctx.task.metrics(values, None, reference)

    prompts = held_out_prompts(ctx, gen.prompts, gen.prompt_tokens)
    log.info("greedy agreement on %d held-out prompts", len(prompts))
    teacher_tokens = greedy(teacher, prompts, gen.agreement_tokens)
    student_metrics["generation_agreement"] = agreement(student, teacher_tokens, prompts)
    speed = generation_speed(
        {"teacher": teacher, "student": student},
        prompts,
        gen.speed_new_tokens,
        tuple(gen.speed_batch_sizes),
        gen.rounds,
    )
    teacher_folder = Path(ctx.teacher_ref)
    report = {
        "task": ctx.task.name,
        "teacher": model_entry(ctx.teacher_ref, teacher, None, teacher_metrics)
        | {"generation": speed["teacher"]},
        "student": model_entry(str(model_dir), student, model_dir, student_metrics)
        | {"generation": speed["student"], "init": ctx.student_info},
    }
    if teacher_folder.is_file():  # a GGUF file: its (quantized) size on disk
        report["teacher"]["size_mb"] = round(teacher_folder.stat().st_size / 2**20, 3)
    elif teacher_folder.is_dir():
        report["teacher"]["size_mb"] = round(size_on_disk_mb(teacher_folder), 3)
    report["speedup"] = {
        f"generate_bs{b}": round(
            speed["student"][f"tokens_per_s_bs{b}"] / speed["teacher"][f"tokens_per_s_bs{b}"], 3
        )
        for b in gen.speed_batch_sizes
    } | {"ttft_bs1": round(speed["teacher"]["ttft_ms_bs1"] / speed["student"]["ttft_ms_bs1"], 3)}
    report["perplexity_ratio"] = round(
        student_metrics["perplexity"] / teacher_metrics["perplexity"], 4
    )
    report["non_embedding_ratio"] = round(
        report["student"]["non_embedding_params"] / report["teacher"]["non_embedding_params"], 4
    )
    report["generation_setup"] = gen.model_dump() | {
        "decoding": "greedy, KV cache, no stop at EOS",
        "threads": torch.get_num_threads(),
        "eval_tokens": int(np.sum(~np.isnan(reference.reshape(len(reference), -1, 2)[..., 0]))),
    }
    report["stages"] = stages
    report["machine"] = machine_info()
    return report
