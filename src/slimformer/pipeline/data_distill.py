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
    label_conflicts,
    length_bins,
    select,
    selection_stats,
    softmax,
)
from slimformer.pipeline.augment import augmented_rows
from slimformer.pipeline.context import RunContext
from slimformer.utils.atomic import write_json_atomic

log = logging.getLogger("slimformer")


def training_rows(ctx: RunContext, cfg) -> tuple[datasets.Dataset, int, dict]:
    """The stage's rows before selection: ``rows`` filter, then augmented copies appended.
    Returns (rows with idx 0..n-1, how many at the end have no gold label, report info)."""
    ds, n_unlabeled, info = ctx.train_ds, ctx.unlabeled_count, {}
    n_labeled = len(ds) - n_unlabeled
    if cfg.rows != "all":
        if cfg.rows == "unlabeled" and not n_unlabeled:
            raise RecipeError(
                "rows: unlabeled needs data.unlabeled (the plain text to distill on)."
            )
        keep = range(n_labeled) if cfg.rows == "labeled" else range(n_labeled, len(ds))
        ds = _reindex(ds.select(keep))
        n_unlabeled = 0 if cfg.rows == "labeled" else len(ds)
        n_labeled = len(ds) - n_unlabeled
        info["rows"] = cfg.rows
    if cfg.augment is not None:
        extra, info["augment"] = augmented_rows(ctx, cfg.augment)
        ds = _reindex(datasets.concatenate_datasets([ds.remove_columns("idx"), extra]))
        n_unlabeled += len(extra)
    if n_unlabeled:
        info["unlabeled_examples"] = n_unlabeled
        info["labeled_examples"] = n_labeled
    return ds, n_unlabeled, info


def _reindex(ds: datasets.Dataset) -> datasets.Dataset:
    if "idx" in ds.column_names:
        ds = ds.remove_columns("idx")
    return ds.add_column("idx", list(range(len(ds))))


def choose_training_data(
    ctx: RunContext, cfg, targets, stage_dir: Path, rows: datasets.Dataset, n_unlabeled: int
) -> tuple[datasets.Dataset, object | None, dict]:
    """(training rows, batch sampler or None, report info) for a distill stage; ``rows`` come
    from ``training_rows`` and ``targets`` are the teacher's outputs for them."""
    train_ds, info = rows, {}
    if cfg.selection is None and cfg.curriculum is None:
        return train_ds, None, info
    if getattr(ctx.teacher_config, "num_labels", 2) < 2 or ctx.task.name != (
        "sequence-classification"
    ):
        raise RecipeError(
            "selection and curriculum rank examples by the teacher's class probabilities; "
            "they need a sentence-classification teacher."
        )
    log.info("teacher labels for all %d training rows (cached after the first run)", len(train_ds))
    probs = softmax(targets.all_values(rows, ctx.collate).astype(np.float64))
    if cfg.selection is not None:
        per_teacher = [probs]
        if cfg.selection.criterion == "disagreement":
            if not hasattr(targets, "targets"):
                raise RecipeError(
                    "selection by disagreement needs two or more teachers: add teacher.also."
                )
            per_teacher = [
                softmax(t.all_values(rows, ctx.collate).astype(np.float64)) for t in targets.targets
            ]
        train_ds, info["selection"] = _select(
            rows, n_unlabeled, cfg.selection, probs, per_teacher, stage_dir
        )
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
            lengths=np.array([len(x) for x in train_ds["input_ids"]]),
        )
        info["curriculum"] = cfg.curriculum.model_dump()
    return train_ds, sampler, info


def _select(
    rows: datasets.Dataset,
    n_unlabeled: int,
    sel,
    probs: np.ndarray,
    per_teacher: list[np.ndarray],
    stage_dir: Path,
):
    n = len(probs)
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
    scores = informativeness(sel.criterion, [p[candidates] for p in per_teacher], sel.seed)
    predicted = sub.argmax(-1)
    strata = None
    if sel.length_bins > 1:
        lengths = np.array([len(ids) for ids in rows.select(candidates.tolist())["input_ids"]])
        strata = length_bins(lengths, sel.length_bins)
    conflicts = None
    if sel.skip_label_conflicts:
        conflicts = label_conflicts(predicted, np.asarray(rows["labels"])[candidates])
    chosen = select(
        scores,
        sel.fraction,
        predicted,
        sel.class_balanced,
        sel.sampling,
        sel.seed,
        strata,
        last=conflicts,
        skip_top=sel.skip_top,
        score_bins=sel.score_bins,
    )
    keep = candidates[chosen]
    if sel.scope == "unlabeled":
        keep = np.concatenate([np.arange(n - n_unlabeled), keep])
    stats = selection_stats(scores, chosen, predicted) | sel.model_dump()
    if conflicts is not None:
        stats["label_conflicts"] = {
            "all": int(conflicts.sum()),
            "kept": int(conflicts[chosen].sum()),
        }
    write_json_atomic(stage_dir / "selection.json", {**stats, "kept_rows": keep.tolist()})
    log.info(
        "selection (%s, %.0f%%): %d of %d candidate rows kept",
        sel.criterion,
        sel.fraction * 100,
        len(chosen),
        len(candidates),
    )
    return rows.select(keep.tolist()), stats
