"""Everything a run needs, loaded and validated up front (before any long work starts):
task, tokenizers, teacher config, tokenized data, the initial student."""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slimformer.errors import ModelError, RecipeError
from slimformer.methods.data_distill.multi_teacher import MultiTeacherTargets, check_label_sets
from slimformer.methods.distill.layerwise.state_cache import TeacherStateCache
from slimformer.methods.distill.teacher_cache import TeacherCache, dataset_fingerprint
from slimformer.methods.distill.teacher_targets import TeacherTargets, teacher_precision
from slimformer.models.arch import num_layers
from slimformer.models.crf import attach_crf, has_crf
from slimformer.models.loading import (
    check_model_ref,
    check_same_tokenizer,
    load_config,
    load_tokenizer,
    weight_files,
)
from slimformer.models.student import derive_student, resolve_layers
from slimformer.pipeline.recipe import Recipe
from slimformer.tasks import Task, get_task
from slimformer.tasks.base import MODEL_INPUTS
from slimformer.tasks.sequence_classification import is_regression
from slimformer.utils.hashing import fingerprint_arrays, fingerprint_files

log = logging.getLogger("slimformer")


def _precision_key(precision: str) -> str:
    """Cache-key part of the teacher's precision; fp32 adds nothing, so older caches stay valid."""
    return "" if precision == "fp32" else precision


def default_cache_dir() -> Path:
    return Path(os.environ.get("SLIMFORMER_CACHE", Path.home() / ".cache" / "slimformer"))


@dataclass
class RunContext:
    recipe: Recipe
    task: Task
    tokenizer: PreTrainedTokenizerBase
    train_ds: datasets.Dataset
    eval_ds: datasets.Dataset
    collate: Callable
    cache_root: Path
    teacher_ref: str | None = None
    teacher_config: object | None = None
    student_info: dict = field(default_factory=dict)
    label_names: list[str] | None = None  # set when fine-tuning a backbone without a teacher
    unlabeled_count: int = 0  # rows at the end of train_ds from data.unlabeled (label -100)
    train_raw: datasets.Dataset | None = None  # labeled training rows as read (for augmentation)
    _teacher: PreTrainedModel | None = None
    _extra_loaders: dict = field(default_factory=dict)
    _teacher_fp: str | None = None

    @property
    def primary_metric(self) -> str:
        """The metric checkpoints are chosen by and ``retained`` compares: the task's, or
        Spearman for a one-output regression model (STS-B scores have no accuracy)."""
        if self.task.name == "sequence-classification":
            config = self.teacher_config
            regression = (
                is_regression(config) if config is not None else self.label_names == REGRESSION
            )
            if regression:
                return "spearman"
        return self.task.primary_metric

    def load_teacher(self) -> PreTrainedModel:
        if self._teacher is None:
            log.info("loading teacher %s", self.teacher_ref)
            self._teacher = self.task.load_model(
                self.teacher_ref, trust_remote_code=self.recipe.teacher.trust_remote_code
            ).eval()
        return self._teacher

    def teacher_fingerprint(self) -> str:
        """Content hash of the teacher's weights (+ task): the teacher half of the cache key."""
        if self._teacher_fp is None:
            self._teacher_fp = self._fingerprint(self.teacher_ref, self.load_teacher)
        return self._teacher_fp

    def _fingerprint(self, ref: str, load) -> str:
        path = Path(ref)
        if path.is_dir():
            fp = fingerprint_files(weight_files(path) + [path / "config.json"])
        elif path.is_file():  # a single-file model (GGUF)
            fp = fingerprint_files([path])
        else:
            fp = fingerprint_arrays([v.numpy() for v in load().state_dict().values()])
        return fingerprint_arrays([], extra=fp + self.task.name)

    def teacher_targets(self, ds: datasets.Dataset, mixed: bool = True, precision: str = "fp32"):
        """The teacher's outputs for ``ds`` (cached). With ``teacher.also`` and ``mixed``, the
        mix of every teacher's outputs; ``mixed=False`` is the primary teacher alone.
        ``precision``: the teacher passes in fp32 or bf16 autocast (cached apart)."""
        data_fp = dataset_fingerprint(ds, MODEL_INPUTS, extra=_precision_key(precision))
        root = self.cache_root / "teacher"
        primary = TeacherTargets(
            self.task,
            TeacherCache(root, self.teacher_fingerprint(), data_fp, len(ds)),
            self.load_teacher,
            precision,
        )
        extras = self.recipe.teacher.also if self.recipe.teacher else []
        if not mixed or not extras:
            return primary
        targets = [primary]
        for extra in extras:
            ref = check_model_ref(extra.model)

            def load(ref=ref, extra=extra):
                log.info("loading teacher %s", ref)
                return self.task.load_model(ref, trust_remote_code=extra.trust_remote_code).eval()

            loader = self._extra_loaders.setdefault(ref, _once(load))
            cache = TeacherCache(root, self._fingerprint(ref, loader), data_fp, len(ds))
            targets.append(TeacherTargets(self.task, cache, loader, precision))
        weights = [self.recipe.teacher.weight] + [e.weight for e in extras]
        return MultiTeacherTargets(targets, weights, self.recipe.teacher.mix)

    def teacher_state_cache_opener(self, ds: datasets.Dataset, precision: str = "fp32"):
        """``layout -> TeacherStateCache`` for the teacher's internal states on ``ds``."""
        data_fp = dataset_fingerprint(ds, MODEL_INPUTS, extra=_precision_key(precision))
        lengths = np.array([len(x) for x in ds["input_ids"]], dtype=np.int64)
        root = self.cache_root / "teacher_states"

        def open_cache(layout):
            return TeacherStateCache(root, self.teacher_fingerprint(), data_fp, lengths, layout)

        return open_cache

    def initial_student(self) -> PreTrainedModel:
        cfg = self.recipe.student
        if cfg.crf and self.task.name != "token-classification":
            raise RecipeError(
                "student.crf is for token classification (task: token-classification)."
            )
        if cfg.model is not None:
            student = self.task.load_model(check_model_ref(cfg.model), **self._label_kwargs())
        else:
            keep, scores = self._ranked_layers()
            with torch.random.fork_rng():  # a random-init student depends on the seed only
                torch.manual_seed(self.recipe.seed)
                student, self.student_info = derive_student(self.load_teacher(), cfg, keep)
            if scores:
                self.student_info.update(layer_selection=cfg.layer_selection, **scores)
            if cfg.width_pruning is not None:
                student = self._width_pruned(student)
        if cfg.crf and not has_crf(student):
            attach_crf(student)
            self.student_info["crf"] = True
        return student

    def _calibration_batches(self):
        from torch.utils.data import DataLoader

        cfg = self.recipe.student
        rows = self.train_ds.select(range(min(cfg.selection_examples, len(self.train_ds))))
        rows = rows.remove_columns([c for c in rows.column_names if c not in MODEL_INPUTS])
        return DataLoader(rows, batch_size=4, collate_fn=self.collate)

    def _width_pruned(self, student: PreTrainedModel) -> PreTrainedModel:
        from slimformer.methods.prune.decoder_width import prune_decoder_width, width_importance

        width = self.recipe.student.width_pruning
        before = sum(p.numel() for p in student.parameters())
        scores = width_importance(student.eval(), self._calibration_batches())
        prune_decoder_width(student, scores, width.intermediate_size, width.kv_heads)
        after = sum(p.numel() for p in student.parameters())
        self.student_info["width_pruning"] = {
            **width.model_dump(exclude_none=True),
            "params_before": before,
            "params_after": after,
        }
        log.info("width pruning %s: %d -> %d parameters", width.model_dump(), before, after)
        return student.train()

    def _ranked_layers(self) -> tuple[list[int] | None, dict]:
        """Teacher layers kept by ``student.layer_selection`` (None: evenly spread)."""
        from slimformer.methods.prune import layer_ranking

        cfg = self.recipe.student
        if cfg.layer_selection == "even" or cfg.layers is None:
            return None, {}
        if not isinstance(cfg.layers, int):
            raise RecipeError(
                "student.layer_selection chooses the layers itself: give student.layers as a "
                "number, or drop layer_selection to keep an explicit list."
            )
        teacher = self.load_teacher()
        precision = partial(teacher_precision, cfg.selection_precision, teacher.device)
        if cfg.layer_selection == "greedy_kl":
            keep, trace = layer_ranking.keep_by_greedy_divergence(
                teacher, self.task.forward, self._calibration_batches(), cfg.layers, precision
            )
            log.info("student keeps teacher layers %s (greedy_kl)", keep)
            return keep, {"greedy_removals": trace}
        with precision():
            cos = layer_ranking.layer_states_cosines(teacher, self._calibration_batches())
        pick = {
            "block_influence": layer_ranking.keep_by_block_influence,
            "angular": layer_ranking.keep_by_angular_distance,
        }[cfg.layer_selection]
        keep = pick(cos, cfg.layers)
        log.info("student keeps teacher layers %s (%s)", keep, cfg.layer_selection)
        return keep, layer_ranking.layer_scores(cos)

    def _label_kwargs(self) -> dict:
        """Label maps for a model fine-tuned from a backbone (no teacher to copy them from)."""
        if self.label_names is None:
            return {}
        if self.label_names == REGRESSION:
            return {"num_labels": 1, "problem_type": "regression"}
        names = self.label_names
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)},
        }


REGRESSION: list[str] = []  # label_names of a regression model: one output, no classes


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _labels_from_data(values: list, problem_type: str | None = None) -> list[str]:
    """Class names in id order, or ``REGRESSION`` for numeric targets that are not all whole
    numbers (e.g. STS-B's 0-5 scores) or when the recipe says ``problem_type: regression``."""
    uniq = sorted({str(v).strip() for v in values})
    if problem_type == "regression" or (
        problem_type is None
        and all(_is_number(u) for u in uniq)
        and any(not float(u).is_integer() for u in uniq)
    ):
        if not all(_is_number(u) for u in uniq):
            bad = next(u for u in uniq if not _is_number(u))
            raise RecipeError(
                f"problem_type is regression but the label {bad!r} is not a number; fix the "
                f"data or data.label_column."
            )
        return REGRESSION
    if all(u.lstrip("-").isdigit() for u in uniq):
        ids = sorted(int(u) for u in uniq)
        if ids == list(range(len(ids))):
            return [str(i) for i in ids]
    if "O" in uniq:  # IOB tags: the outside tag first, as NER models usually have it
        uniq = ["O"] + [u for u in uniq if u != "O"]
    return uniq


class _LabelConfig:
    """Minimal config carrying label maps, for validating data before a backbone is loaded."""

    def __init__(self, names: list[str]) -> None:
        regression = names == REGRESSION
        self.id2label = {0: "LABEL_0"} if regression else dict(enumerate(names))
        self.num_labels = 1 if regression else len(names)
        self.problem_type = "regression" if regression else None


def build_context(recipe: Recipe, cache_dir: str | None = None) -> RunContext:
    task = get_task(recipe.task)
    teacher_ref = check_model_ref(recipe.teacher.model) if recipe.teacher else None
    tok_ref = teacher_ref or check_model_ref(recipe.student.model)
    tokenizer = load_tokenizer(tok_ref)
    teacher_config = load_config(teacher_ref) if teacher_ref else None
    if recipe.teacher and recipe.teacher.also:
        _check_extra_teachers(recipe, tokenizer, teacher_config)
    if teacher_ref and recipe.student.model:
        check_same_tokenizer(tokenizer, load_tokenizer(recipe.student.model), recipe.student.model)
    if teacher_config is not None and recipe.student.model is None:
        resolve_layers(recipe.student, num_layers(teacher_config))  # depth errors now, not later
    train_raw, eval_raw = task.raw_splits(recipe.data, recipe.seed)
    raw_labels = (
        train_raw[recipe.data.label_column]
        if recipe.data.label_column in train_raw.column_names
        else None
    )
    label_config, label_names = teacher_config, None
    labeled = task.name in ("sequence-classification", "token-classification")
    if label_config is None and labeled:
        if task.name == "token-classification":  # one tag per token: every tag in the data
            raw_labels = [tag for tags in raw_labels for tag in tags]
        label_names = recipe.labels or _labels_from_data(raw_labels, recipe.problem_type)
        label_config = _LabelConfig(label_names)
    if labeled and label_config is not None:
        _check_label_count(label_config, recipe)
    train_ds = task.prepare(train_raw, tokenizer, recipe.data, label_config, "train")
    eval_ds = task.prepare(eval_raw, tokenizer, recipe.data, label_config, "eval")
    unlabeled_count = 0
    if recipe.data.unlabeled is not None:
        if not hasattr(task, "raw_unlabeled"):
            raise RecipeError(f"data.unlabeled is not supported for the {task.name} task.")
        unlabeled = task.prepare_unlabeled(
            task.raw_unlabeled(recipe.data, recipe.seed), tokenizer, recipe.data, label_config
        )
        unlabeled_count = len(unlabeled)
        train_ds = datasets.concatenate_datasets(
            [train_ds.remove_columns("idx"), unlabeled.remove_columns("idx")]
        )
        train_ds = train_ds.add_column("idx", list(range(len(train_ds))))
    ctx = RunContext(
        recipe=recipe,
        task=task,
        tokenizer=tokenizer,
        train_ds=train_ds,
        eval_ds=eval_ds,
        collate=task.collator(tokenizer),
        cache_root=Path(cache_dir or recipe.cache_dir or default_cache_dir()),
        teacher_ref=teacher_ref,
        teacher_config=teacher_config,
        label_names=label_names,
        unlabeled_count=unlabeled_count,
        train_raw=train_raw,
    )
    return ctx


def _check_label_count(config, recipe: Recipe) -> None:
    if recipe.labels and len(recipe.labels) != config.num_labels:
        raise ModelError(
            f"recipe labels {recipe.labels} do not match the teacher's "
            f"{config.num_labels} labels {list(config.id2label.values())}."
        )


def teacher_eval_values(ctx: RunContext, sync: bool = True) -> np.ndarray:
    """The (primary) teacher's eval-set outputs, through the same cache as training targets.
    Under ``accelerate launch`` the main process fills the cache, the others read it;
    ``sync=False`` where only the main process runs (the final report)."""
    from contextlib import nullcontext

    from slimformer.train.processes import processes

    with processes().main_process_first() if sync else nullcontext():
        return ctx.teacher_targets(ctx.eval_ds, mixed=False).all_values(ctx.eval_ds, ctx.collate)


def _once(load):
    """A loader that loads once and then returns the same model."""
    cell = []

    def get():
        if not cell:
            cell.append(load())
        return cell[0]

    return get


def _check_extra_teachers(recipe: Recipe, tokenizer, config) -> None:
    """Every extra teacher shares the primary's tokenizer and label set, checked up front."""
    if config.num_labels < 2:
        raise RecipeError(
            "teacher.also mixes class probabilities; regression teachers cannot be mixed."
        )
    names = [recipe.teacher.model]
    label_sets = [[config.id2label[i] for i in range(config.num_labels)]]
    for extra in recipe.teacher.also:
        ref = check_model_ref(extra.model)
        check_same_tokenizer(tokenizer, load_tokenizer(ref), ref)
        other = load_config(ref)
        names.append(extra.model)
        label_sets.append([other.id2label[i] for i in range(other.num_labels)])
    check_label_sets(label_sets, names)
