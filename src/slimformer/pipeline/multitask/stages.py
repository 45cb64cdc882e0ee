"""Multi-task training stages: ``distill`` (each task's KD against its own teacher, with its
own layer-wise terms and augmented copies when the stage asks) and ``finetune`` (each task's hard
labels), on batches mixed across tasks by the sampling rule."""

import logging
from pathlib import Path

from slimformer.data.multitask import MultiTaskBatchSampler, MultiTaskCollator, MultiTaskDataset
from slimformer.methods.distill.multitask import MultiTaskLoss
from slimformer.methods.distill.objective import DistillLossConfig, make_loss_fn
from slimformer.models.multitask import MultiTaskModel, load_multitask
from slimformer.pipeline.data_distill import training_rows
from slimformer.pipeline.multitask.context import MultiTaskContext
from slimformer.pipeline.recipe import DistillStage, FinetuneStage
from slimformer.pipeline.stages import kd_loss, train_config_of, train_summary
from slimformer.registry import Registry
from slimformer.tasks.sequence_classification import is_regression
from slimformer.train.loop import train

log = logging.getLogger("slimformer")
MULTITASK_STAGES: Registry = Registry("multi-task stage")


def _model(ctx: MultiTaskContext, model_dir: Path | None) -> MultiTaskModel:
    return ctx.initial_student() if model_dir is None else load_multitask(model_dir)


def _regression(ctx: MultiTaskContext, name: str) -> bool:
    sub = ctx.tasks[name]
    return sub.task.name == "sequence-classification" and is_regression(sub.teacher_config)


def _train_mixed(
    ctx, cfg, model, losses, stage_dir, resume, kind, targets, rows=None
) -> tuple[Path, dict]:
    """The shared loop on one dataset of all tasks, batches drawn by the sampling rule.
    ``rows``: each task's training rows (default: its training set)."""
    mt = ctx.recipe.multitask
    rows = rows or {n: sub.train_ds for n, sub in ctx.tasks.items()}
    dataset = MultiTaskDataset(rows)
    sampler = MultiTaskBatchSampler(
        {n: [len(x) for x in ds["input_ids"]] for n, ds in rows.items()},
        dataset.offsets,
        cfg.batch_size,
        mt.sampling,
        mt.temperature,
        ctx.recipe.seed,
    )
    probabilities = {n: round(p, 4) for n, p in sampler.probabilities.items()}
    log.info("multi-task sampling (%s): %s", mt.sampling, probabilities)
    if cfg.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        log.info("encoder frozen: only the task heads train")
    weights = {n: e.weight for n, e in ctx.recipe.tasks.items()}
    result = train(
        model,
        dataset,
        MultiTaskCollator({n: sub.collate for n, sub in ctx.tasks.items()}),
        MultiTaskLoss(losses, weights),
        train_config_of(cfg),
        stage_dir,
        ctx.recipe.seed,
        evaluate=ctx.evaluate,
        primary_metric=cfg.best_metric or "retained_mean",
        resume=resume,
        tokenizer=ctx.tokenizer,
        desc=f"multi-task {kind}",
        batch_sampler=sampler,
    )
    info = {
        **train_summary(result),
        "sampling": {"rule": mt.sampling, "probabilities": probabilities},
        "task_weights": weights,
        "train_rows": {n: len(ds) for n, ds in rows.items()},
        "metrics_kept": ctx.metrics,
    }
    for name, t in targets.items():
        t.cache.flush()
        info.setdefault("teacher_forward_examples", {})[name] = t.teacher_examples
    return result.model_dir, info


@MULTITASK_STAGES.register("distill")
def distill_stage(
    ctx: MultiTaskContext, cfg: DistillStage, model_dir, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    model = _model(ctx, model_dir)
    losses, targets, rows, per_task = {}, {}, {}, {}
    for name, sub in ctx.tasks.items():
        task_cfg = cfg.model_copy(update={"augment": ctx.recipe.tasks[name].augment})
        if _regression(ctx, name):  # one output: KL has no classes to compare, MSE does
            task_cfg = task_cfg.model_copy(update={"soft": "mse", "hard": "mse"})
        rows[name], _, per_task[name] = training_rows(sub, task_cfg)
        targets[name] = sub.teacher_targets(rows[name], precision=cfg.teacher_precision)
        # layer-wise terms hook the shared encoder (every head's base model)
        losses[name], layerwise = kd_loss(sub, task_cfg, model.encoder, targets[name], rows[name])
        if layerwise:
            per_task[name]["intermediate"] = layerwise
    try:
        model_dir, info = _train_mixed(
            ctx, cfg, model, losses, stage_dir, resume, "distill", targets, rows
        )
    finally:
        for loss in losses.values():
            if loss.layerwise is not None:
                loss.layerwise.close()  # the hooks on the shared encoder go with the stage
    per_task = {n: v for n, v in per_task.items() if v}
    return model_dir, {**info, **({"per_task": per_task} if per_task else {})}


@MULTITASK_STAGES.register("finetune")
def finetune_stage(
    ctx: MultiTaskContext, cfg: FinetuneStage, model_dir, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    model = _model(ctx, model_dir)
    losses = {}
    for name, sub in ctx.tasks.items():
        hard = cfg.hard or ("mse" if _regression(ctx, name) else "ce")
        losses[name] = make_loss_fn(sub.task, DistillLossConfig(alpha=0.0, hard=hard), None)
    return _train_mixed(ctx, cfg, model, losses, stage_dir, resume, "finetune", {})
