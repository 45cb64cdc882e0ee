"""What a distill stage trains on, when it uses data distillation: the teacher labels every
training row (through the cache), the most informative share of the unlabeled rows (or of all
rows) is kept, and the batches may follow an easy-to-hard curriculum. The selection and its
statistics are saved with the run (``selection.json`` in the stage folder)."""

import logging
from pathlib import Path

import datasets
import numpy as np

from slimformer.errors import RecipeError
from slimformer.methods.data_distill.curriculum import CurriculumBatchSampler
from slimformer.methods.data_distill.selection import (
    informativeness,
    select,
    selection_stats,
    softmax,
)
from slimformer.pipeline.context import RunContext
from slimformer.utils.atomic import write_json_atomic

log = logging.getLogger("slimformer")


def choose_training_data(
    ctx: RunContext, cfg, targets, stage_dir: Path
) -> tuple[datasets.Dataset, object | None, dict]:
    """(training rows, batch sampler or None, report info) for a distill stage."""
    train_ds, info = ctx.train_ds, {}
    if ctx.unlabeled_count:
        info["unlabeled_examples"] = ctx.unlabeled_count
        info["labeled_examples"] = len(ctx.train_ds) - ctx.unlabeled_count
    if cfg.selection is None and cfg.curriculum is None:
        return train_ds, None, info
    if getattr(ctx.teacher_config, "num_labels", 2) < 2:
        raise RecipeError(
            "selection and curriculum rank examples by the teacher's class probabilities; "
            "they need a classification teacher (this one is a regression model)."
        )
    log.info("teacher labels for all %d training rows (cached after the first run)", len(train_ds))
    probs = softmax(targets.all_values(ctx.train_ds, ctx.collate).astype(np.float64))
    if cfg.selection is not None:
        train_ds, info["selection"] = _select(ctx, cfg.selection, probs, stage_dir)
    sampler = None
    if cfg.curriculum is not None:
        confidence = probs[np.asarray(train_ds["idx"])].max(-1)
        sampler = CurriculumBatchSampler(
            confidence,
            cfg.batch_size,
            cfg.epochs,
            cfg.curriculum.pacing,
            cfg.curriculum.start,
            ctx.recipe.seed,
        )
        info["curriculum"] = cfg.curriculum.model_dump()
    return train_ds, sampler, info


def _select(ctx: RunContext, sel, probs: np.ndarray, stage_dir: Path):
    n, n_unlabeled = len(probs), ctx.unlabeled_count
    if sel.scope == "unlabeled":
        if not n_unlabeled:
            raise RecipeError(
                "selection.scope 'unlabeled' needs data.unlabeled; set selection.scope: all to "
                "select among the labeled training rows."
            )
        candidates = np.arange(n - n_unlabeled, n)
    else:
        candidates = np.arange(n)
    sub = probs[candidates]
    scores = informativeness(sel.criterion, [sub], sel.seed)
    predicted = sub.argmax(-1)
    chosen = select(scores, sel.fraction, predicted, sel.class_balanced)
    keep = candidates[chosen]
    if sel.scope == "unlabeled":
        keep = np.concatenate([np.arange(n - n_unlabeled), keep])
    stats = selection_stats(scores, chosen, predicted) | sel.model_dump()
    write_json_atomic(stage_dir / "selection.json", {**stats, "kept_rows": keep.tolist()})
    log.info(
        "selection (%s, %.0f%%): %d of %d candidate rows kept",
        sel.criterion,
        sel.fraction * 100,
        len(chosen),
        len(candidates),
    )
    return ctx.train_ds.select(keep.tolist()), stats
