"""Recipe stages: each takes the current model and returns the folder of the model it trained.
A new stage kind = one function + one ``@STAGES.register``."""

import logging
from collections.abc import Callable
from pathlib import Path

from transformers import PreTrainedModel

from slimformer.eval.predict import evaluate
from slimformer.methods.distill.objective import DistillLossConfig, make_loss_fn
from slimformer.pipeline.context import RunContext, teacher_eval_values
from slimformer.pipeline.recipe import DistillStage, FinetuneStage
from slimformer.registry import Registry
from slimformer.tasks.sequence_classification import is_regression
from slimformer.train.config import TrainConfig
from slimformer.train.loop import TrainResult, train

log = logging.getLogger("slimformer")
StageFn = Callable[..., tuple[Path, dict]]
STAGES: Registry[StageFn] = Registry("stage")


def _train_config(cfg: TrainConfig) -> TrainConfig:
    return TrainConfig(**{k: getattr(cfg, k) for k in TrainConfig.model_fields})


def _summary(result: TrainResult) -> dict:
    return {
        "steps": result.steps,
        "epoch_seconds": [round(s, 2) for s in result.epoch_seconds],
        "best": result.best,
        "evals": result.evals,
        "resumed_from_step": result.resumed_from,
    }


def _eval_fn(ctx: RunContext, reference):
    return lambda model: evaluate(model, ctx.task, ctx.eval_ds, ctx.collate, reference)


@STAGES.register("distill")
def distill_stage(
    ctx: RunContext, cfg: DistillStage, model: PreTrainedModel, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    targets = ctx.teacher_targets(ctx.train_ds)
    before = targets.cache.filled_count
    log.info(
        "teacher cache %s: %d/%d training examples already cached",
        targets.cache.dir,
        before,
        len(ctx.train_ds),
    )
    loss_cfg = DistillLossConfig(**{k: getattr(cfg, k) for k in DistillLossConfig.model_fields})
    loss_fn = make_loss_fn(ctx.task, loss_cfg, targets)
    reference = teacher_eval_values(ctx)
    result = train(
        model,
        ctx.train_ds,
        ctx.collate,
        loss_fn,
        _train_config(cfg),
        stage_dir,
        ctx.recipe.seed,
        evaluate=_eval_fn(ctx, reference),
        primary_metric=ctx.task.primary_metric,
        resume=resume,
        tokenizer=ctx.tokenizer,
        desc="distill",
    )
    targets.cache.flush()
    log.info(
        "teacher forward passes during training: %d examples (%d served from cache)",
        targets.teacher_examples,
        targets.cached_examples,
    )
    return result.model_dir, {
        **_summary(result),
        "teacher_forward_examples": targets.teacher_examples,
        "cached_examples": targets.cached_examples,
        "cache_dir": str(targets.cache.dir),
    }


@STAGES.register("finetune")
def finetune_stage(
    ctx: RunContext, cfg: FinetuneStage, model: PreTrainedModel, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    hard = cfg.hard or ("mse" if is_regression(model.config) else "ce")
    loss_fn = make_loss_fn(ctx.task, DistillLossConfig(alpha=0.0, hard=hard), None)
    result = train(
        model,
        ctx.train_ds,
        ctx.collate,
        loss_fn,
        _train_config(cfg),
        stage_dir,
        ctx.recipe.seed,
        evaluate=_eval_fn(ctx, None),
        primary_metric=_finetune_metric(model),
        resume=resume,
        tokenizer=ctx.tokenizer,
        desc="finetune",
    )
    return result.model_dir, _summary(result)


def _finetune_metric(model: PreTrainedModel) -> str:
    return "spearman" if is_regression(model.config) else "accuracy"
