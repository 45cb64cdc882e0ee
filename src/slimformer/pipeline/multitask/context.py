"""A multi-task run's inputs, loaded and checked before any training: one single-task context
per task (its teacher, data, caches), a shared tokenizer, and the metric kept for each task."""

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from slimformer.errors import ModelError, RecipeError
from slimformer.eval.predict import evaluate, labels_of
from slimformer.models.loading import (
    check_model_ref,
    check_same_tokenizer,
    load_config,
    load_tokenizer,
)
from slimformer.models.multitask import (
    MultiTaskModel,
    TaskView,
    average_encoder_weights,
    build_multitask,
)
from slimformer.models.student import derive_student
from slimformer.pipeline.context import RunContext, build_context, teacher_eval_values
from slimformer.pipeline.recipe import Recipe
from slimformer.tasks.sequence_classification import is_regression

log = logging.getLogger("slimformer")

# Metrics a task may keep (higher is better), by task shape.
KEEPABLE = {
    "classification": ("accuracy", "macro_f1", "mcc"),
    "regression": ("spearman", "pearson"),
    "token-classification": ("f1", "precision", "recall", "token_accuracy"),
}


@dataclass
class MultiTaskContext:
    recipe: Recipe
    tasks: dict[str, RunContext]
    metrics: dict[str, str]  # the metric kept per task
    tokenizer: object
    student_info: dict = field(default_factory=dict)
    _references: dict = field(default_factory=dict)
    _teacher_metrics: dict = field(default_factory=dict)

    @property
    def encoder_sources(self) -> list[str]:
        return self.recipe.multitask.encoder_sources() or [next(iter(self.tasks))]

    def _encoder_model(self, source: str) -> tuple[torch.nn.Module, dict]:
        """A student copied from one task's teacher, or from a model such as the teachers'
        common backbone (as a single-task student's would be)."""
        sub = self.tasks.get(source)
        if sub is not None:
            return sub.initial_student(), dict(sub.student_info)
        first = next(iter(self.tasks.values()))
        with torch.random.fork_rng():  # weights the model lacks start seeded
            torch.manual_seed(self.recipe.seed)
            backbone = first.task.load_model(check_model_ref(source))
            return derive_student(backbone, self.recipe.student)

    def initial_student(self) -> MultiTaskModel:
        """Encoder layers copied from one source, or the average of several sources' copies;
        one head per task copied from that task's teacher."""
        copies = [self._encoder_model(source) for source in self.encoder_sources]
        encoder_model, info = copies[0]
        if len(copies) > 1:
            average_encoder_weights(encoder_model, [model for model, _ in copies[1:]])
        crf = tuple(
            n
            for n, sub in self.tasks.items()
            if self.recipe.student.crf and sub.task.name == "token-classification"
        )
        model = build_multitask(
            encoder_model,
            {n: sub.load_teacher() for n, sub in self.tasks.items()},
            {n: sub.task.name for n, sub in self.tasks.items()},
            crf,
        )
        self.student_info = {
            **info,
            "encoder_from": self.recipe.multitask.encoder_from or self.encoder_sources[0],
            **({"crf": list(crf)} if crf else {}),
        }
        return model

    def reference(self, name: str) -> np.ndarray:
        """The task teacher's eval outputs (cached on disk like every teacher output)."""
        if name not in self._references:
            self._references[name] = teacher_eval_values(self.tasks[name])
        return self._references[name]

    def teacher_metrics(self, name: str) -> dict[str, float]:
        """Computed once per task (every evaluation compares against them)."""
        if name not in self._teacher_metrics:
            sub, ref = self.tasks[name], self.reference(name)
            self._teacher_metrics[name] = sub.task.metrics(ref, labels_of(sub.eval_ds), ref)
        return self._teacher_metrics[name]

    def evaluate(self, model: MultiTaskModel) -> dict[str, float]:
        """Every task's metrics (``NAME/metric``), and the share of its teacher's kept metric
        the student keeps: ``retained_mean`` (the checkpoint choice) and ``retained_min``."""
        out, kept = {}, []
        for name, sub in self.tasks.items():
            m = evaluate(
                TaskView(model, name), sub.task, sub.eval_ds, sub.collate, self.reference(name)
            )
            out.update({f"{name}/{k}": v for k, v in m.items()})
            teacher = self.teacher_metrics(name)[self.metrics[name]]
            if teacher > 0:
                kept.append(m[self.metrics[name]] / teacher)
        out["retained_mean"] = float(np.mean(kept)) if kept else float("nan")
        out["retained_min"] = float(np.min(kept)) if kept else float("nan")
        return out


def _check_tokenizers(recipe: Recipe) -> object:
    """One student encoder reads every task's text: every teacher (and a model the encoder is
    copied from) must split text alike."""
    names = list(recipe.tasks)
    refs = {n: check_model_ref(recipe.tasks[n].teacher.model) for n in names}
    first = load_tokenizer(refs[names[0]])
    for source in recipe.multitask.encoder_sources():
        if source in recipe.tasks:
            continue
        try:
            ref = check_model_ref(source)
        except ModelError as e:
            raise RecipeError(
                f"multitask.encoder_from {source!r} is neither a task ({', '.join(names)}) nor "
                f"a model: {e}"
            ) from None
        try:
            check_same_tokenizer(first, load_tokenizer(ref), ref)
        except ModelError:
            raise RecipeError(
                f"multitask.encoder_from {source!r} uses a different tokenizer from the "
                f"teachers; copy the encoder from a model with their tokenizer."
            ) from None
    for name in names[1:]:
        try:
            check_same_tokenizer(first, load_tokenizer(refs[name]), refs[name])
        except ModelError:
            raise RecipeError(
                f"tasks.{name} and tasks.{names[0]} use different tokenizers "
                f"({refs[name]!r} vs {refs[names[0]]!r}). A multi-task student shares one "
                f"encoder, so every task's teacher must use the same tokenizer: fine-tune them "
                f"from the same backbone, or distill the tasks separately."
            ) from None
    types = {n: load_config(r).model_type for n, r in refs.items()}
    if len(set(types.values())) > 1:
        raise RecipeError(
            f"The task teachers are of different architectures ({types}); a multi-task "
            f"student shares one encoder, so they must be one family."
        )
    return first


def _kept_metric(name: str, recipe: Recipe, sub: RunContext) -> str:
    entry = recipe.tasks[name]
    if sub.task.name == "token-classification":
        shape = "token-classification"
    else:
        config = sub.teacher_config
        shape = "regression" if is_regression(config) else "classification"
    metric = entry.metric or KEEPABLE[shape][0]
    if metric not in KEEPABLE[shape]:
        raise RecipeError(
            f"tasks.{name}.metric {metric!r} is not a {shape} metric to keep; use one of "
            f"{', '.join(KEEPABLE[shape])}."
        )
    return metric


def build_multitask_context(recipe: Recipe, cache_dir: str | None = None) -> MultiTaskContext:
    tokenizer = _check_tokenizers(recipe)
    if recipe.student.crf and not any(
        e.task == "token-classification" for e in recipe.tasks.values()
    ):
        raise RecipeError("student.crf is for token-classification tasks; none is listed.")
    tasks, metrics = {}, {}
    for name, entry in recipe.tasks.items():
        sub_recipe = Recipe(
            task=entry.task,
            seed=recipe.seed,
            teacher=entry.teacher,
            student=recipe.student.model_copy(update={"crf": False}),
            data=entry.data,
            stages=recipe.stages,
            report=recipe.report,
            cache_dir=recipe.cache_dir,
        )
        log.info("task %s: %s, teacher %s", name, entry.task, entry.teacher.model)
        tasks[name] = build_context(sub_recipe, cache_dir)
        metrics[name] = _kept_metric(name, recipe, tasks[name])
    return MultiTaskContext(recipe, tasks, metrics, tokenizer)
