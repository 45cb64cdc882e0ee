"""The recipe schema: YAML in, typed config out, errors with their path in the file.

stages.0.distill.temperature | Input should be greater than 0 | -1
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from slimformer.config import StrictConfig
from slimformer.data.config import DataConfig
from slimformer.data.multitask import SamplingRule
from slimformer.errors import RecipeError
from slimformer.export.ort_quantize import QuantizeConfig
from slimformer.methods.augment.config import AugmentConfig
from slimformer.methods.distill.losses import LAYER_LOSSES
from slimformer.methods.distill.objective import DistillLossConfig
from slimformer.models.student import StudentConfig
from slimformer.optimize.config import OptimizeConfig
from slimformer.train.config import TrainConfig


class ExtraTeacher(StrictConfig):
    model: str = Field(description="folder, hub id, or package:NAME/folder")
    weight: float = Field(1.0, ge=0, description="weight in the fixed mix")
    trust_remote_code: bool = False


class TeacherConfig(StrictConfig):
    model: str = Field(description="folder, hub id, or package:NAME/folder")
    trust_remote_code: bool = False
    weight: float = Field(1.0, ge=0, description="this teacher's weight when `also` is set")
    also: list[ExtraTeacher] = Field(
        [], description="more teachers whose soft labels are mixed with this one's"
    )
    mix: Literal["fixed", "confidence"] = Field(
        "fixed", description="fixed weights, or per example by each teacher's confidence"
    )


class SelectionConfig(StrictConfig):
    """Keep the most informative teacher-labeled examples (ERNIE-Tiny data distillation)."""

    criterion: Literal["entropy", "margin", "disagreement", "random"] = Field(
        "entropy", description="disagreement: between the teachers (needs teacher.also)"
    )
    fraction: float = Field(description="share kept, in (0, 1]")
    class_balanced: bool = False
    length_bins: int = Field(
        0,
        ge=0,
        description="> 1: keep the fraction within each of this many token-length quantile "
        "bins (the kept rows keep the pool's length mix); 0 or 1: off",
    )
    skip_label_conflicts: bool = Field(
        False,
        description="rank rows whose gold label the teacher's top class contradicts last "
        "(ambiguous fragments or label noise); rows without a gold label are unaffected",
    )
    skip_top: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of the candidate rows, the most informative ones, left out before the "
        "fraction is taken (the most ambiguous rows are often noise); 0: off",
    )
    sampling: Literal["top", "proportional", "stratified"] = Field(
        "top",
        description="top: the most informative rows; proportional: drawn with probability "
        "proportional to the score (seeded), so easier rows are not all left out; stratified: "
        "the budget shared over score_bins equal-width score bins, smallest bin first, random "
        "within each (coverage-centric selection; pair it with skip_top)",
    )
    score_bins: int = Field(50, ge=1, description="for stratified sampling: score bins")
    scope: Literal["unlabeled", "all"] = Field(
        "unlabeled", description="select among data.unlabeled rows only, or all training rows"
    )
    seed: int = 0

    @field_validator("fraction")
    @classmethod
    def _unit(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("selection fraction must be in (0, 1] (0.3 keeps 30%)")
        return v

    @model_validator(mode="after")
    def _room_after_skip(self) -> "SelectionConfig":
        if self.skip_top + self.fraction > 1:
            raise ValueError(
                f"selection.skip_top ({self.skip_top}) + fraction ({self.fraction}) exceed 1: "
                "there are not enough rows left to keep; lower one of them"
            )
        return self


class CurriculumConfig(StrictConfig):
    """Easy-to-hard order by teacher confidence; the allowed share grows with a pacing function."""

    pacing: Literal["linear", "root", "step"] = "linear"
    start: float = Field(0.3, gt=0, le=1, description="share of the easiest examples at step 0")


class KDTrainStage(TrainConfig, DistillLossConfig):
    """Training against the teacher: the loop's settings plus the KD objective's."""


class DistillStage(KDTrainStage):
    """Train the student on the teacher's soft targets mixed with the hard labels (and, with
    ``intermediate``, on its hidden states and attention)."""

    rows: Literal["all", "labeled", "unlabeled"] = Field(
        "all",
        description="training rows used: all, the labeled ones, or data.unlabeled only "
        "(general distillation on plain text)",
    )
    augment: AugmentConfig | None = Field(
        None, description="add augmented copies of the labeled rows, labeled by the teacher"
    )
    selection: SelectionConfig | None = None
    curriculum: CurriculumConfig | None = None
    teacher_logits: Literal["topk", "online"] = Field(
        "topk",
        description="causal-lm: the teacher's top-k log-probs cached on disk (one teacher pass "
        "per block, reused by later epochs and runs), or the teacher run on every batch",
    )
    top_k: int = Field(64, gt=0, description="causal-lm, teacher_logits topk: tokens kept")
    teacher_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="the teacher's forward passes (soft labels, layer-wise states) in fp32 or "
        "bf16 autocast: several times faster on CPUs with bf16 units; cached apart from fp32",
    )


class FinetuneStage(TrainConfig):
    """Train on hard labels only (a teacher from a backbone, or a student without KD)."""

    hard: Literal["ce", "mse"] | None = Field(None, description="default: ce, mse if regression")


class ExportStage(StrictConfig):
    """Export to ONNX (dynamic axes, ORT fusions) and check parity with PyTorch on eval data."""

    opset: int = Field(17, ge=14, le=21, description="ONNX opset")
    optimize: bool = Field(True, description="ONNX Runtime transformer fusions")
    parity_max_abs_diff: float = Field(1e-3, gt=0)
    parity_min_agreement: float = Field(0.999, gt=0, le=1)


class QuantizeStage(QuantizeConfig):
    """INT8 with ONNX Runtime (exports first if the input is a PyTorch model)."""

    opset: int = Field(17, ge=14, le=21, description="ONNX opset of the fp32 export")


class QatStage(KDTrainStage):
    """Quantization-aware training: calibrate activation ranges, train with the INT8 rounding
    of ONNX Runtime's static quantization simulated (KD from the teacher as the loss), then
    export the INT8 ONNX model with those ranges. For when post-training INT8 loses too much."""

    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(1e-5, gt=0)
    per_channel: bool = Field(False, description="one weight scale per output channel")
    calibration_examples: int = Field(500, gt=0, description="training rows for the ranges")
    calibration_batch_size: int = Field(16, gt=0)
    opset: int = Field(17, ge=14, le=21, description="ONNX opset of the export")


class PruneStage(KDTrainStage):
    """Remove heads / FFN neurons / layers in ``iterations`` steps, each recovered with KD
    (the distill settings: ``epochs`` is the recovery per iteration)."""

    heads: float = Field(0.0, description="fraction of attention heads removed, [0, 1)")
    ffn: float = Field(0.0, description="fraction of FFN neurons removed, [0, 1)")
    layers: int = Field(0, ge=0, description="whole layers removed (lowest drop-one loss)")
    ffn_importance: Literal["taylor", "magnitude"] = "taylor"
    iterations: int = Field(1, ge=1)
    importance_examples: int = Field(512, gt=0)
    recover: bool = Field(True, description="KD recovery after each pruning step")

    @field_validator("heads", "ffn")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("fraction of units to remove must be in [0, 1) (0.5 removes half)")
        return v


class SparsifyStage(KDTrainStage):
    """Unstructured magnitude pruning to ``sparsity`` (global or per layer) on a cubic schedule
    over ``iterations`` steps, each recovered with KD; masks made permanent at the end."""

    sparsity: float = Field(0.5, description="fraction of Linear weights set to zero, [0, 1)")
    scope: Literal["global", "per_layer"] = "global"
    iterations: int = Field(3, ge=1)

    @field_validator("sparsity")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("sparsity must be in [0, 1)")
        return v


class OptimizeStage(OptimizeConfig):
    """Try fp32/bf16/int8 x PyTorch/ONNX Runtime x compiled, keep the fastest within max_drop."""


STAGE_KINDS = (
    "distill",
    "finetune",
    "prune",
    "sparsify",
    "export",
    "quantize",
    "qat",
    "optimize",
)


class StageEntry(StrictConfig):
    """One list item: exactly one of the ``STAGE_KINDS`` keys (``distill:``, ``qat:``, ...)."""

    distill: DistillStage | None = None
    finetune: FinetuneStage | None = None
    prune: PruneStage | None = None
    sparsify: SparsifyStage | None = None
    export: ExportStage | None = None
    quantize: QuantizeStage | None = None
    qat: QatStage | None = None
    optimize: OptimizeStage | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "StageEntry":
        if sum(getattr(self, k) is not None for k in STAGE_KINDS) != 1:
            raise ValueError(f"each stage must have exactly one key: {', '.join(STAGE_KINDS)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STAGE_KINDS if getattr(self, k) is not None)

    @property
    def config(self) -> StrictConfig:
        return getattr(self, self.kind)


class GenerationReportConfig(StrictConfig):
    """causal-lm: greedy agreement with the teacher on held-out prompts, and generation speed."""

    prompts: int = Field(16, gt=0, description="prompts cut from the starts of eval windows")
    prompt_tokens: int = Field(32, gt=0)
    agreement_tokens: int = Field(64, gt=0, description="greedy tokens compared per prompt")
    speed_new_tokens: int = Field(128, gt=0, description="tokens generated when timing")
    speed_batch_sizes: list[int] = Field([1, 8], min_length=1)
    rounds: int = Field(3, gt=0, description="timing rounds (median)")


class ReportConfig(StrictConfig):
    batch_sizes: list[int] = Field([1, 32], min_length=1)
    seq_len: int = Field(64, gt=0)
    repeats: int = Field(10, gt=0)
    generation: GenerationReportConfig = GenerationReportConfig()


# DistillStage settings a causal-lm stage does not take (yet).
CAUSAL_LM_UNSUPPORTED = (
    "selection",
    "curriculum",
    "augment",
    "temperatures",
    "relations",
)
MULTI_TASK = "multi-task"
MULTI_TASK_STAGES = ("distill", "finetune")
# DistillStage settings a multi-task stage does not take (yet): each needs per-task design.
MULTI_TASK_UNSUPPORTED = ("selection", "curriculum", "augment")


class TaskEntry(StrictConfig):
    """One task of a multi-task recipe: its kind, its teacher and its data."""

    task: Literal["sequence-classification", "token-classification"]
    teacher: TeacherConfig
    data: DataConfig
    metric: str | None = Field(
        None,
        description="the metric kept for this task (default: accuracy; f1 for token "
        "classification; spearman for regression), e.g. mcc for CoLA",
    )
    weight: float = Field(1.0, gt=0, description="weight of this task's loss")
    augment: AugmentConfig | None = Field(
        None,
        description="augmented copies of this task's training rows, labeled by its teacher, "
        "in every distill stage (e.g. for a small task beside a large one)",
    )

    @model_validator(mode="after")
    def _one_teacher(self) -> "TaskEntry":
        if self.teacher.also:
            raise ValueError("a multi-task entry takes one teacher (teacher.also is not supported)")
        return self


class MultiTaskConfig(StrictConfig):
    """How a multi-task recipe mixes its tasks and builds the shared student."""

    sampling: SamplingRule = Field(
        "temperature",
        description="which task the next batch comes from: proportional (to its rows), "
        "temperature (rows ** 1/T), round-robin",
    )
    temperature: float = Field(2.0, gt=0, description="for sampling: temperature")
    encoder_from: str | list[str] | None = Field(
        None,
        description="where the student's encoder layers are copied from: a task name (its "
        "teacher) or a model with the teachers' tokenizer, e.g. the backbone they were "
        "fine-tuned from (default: the first task's teacher); a list averages the layers "
        "copied from each, weight by weight (teachers fine-tuned from one backbone merge like "
        "a model soup, so no task starts from layers tuned for another only); each head starts "
        "from its own teacher's head",
    )

    @field_validator("encoder_from")
    @classmethod
    def _sources_listed_once(cls, value):
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError(
                f"multitask.encoder_from lists {value}: name each source once, at least one"
            )
        return value

    def encoder_sources(self) -> list[str]:
        """``encoder_from`` as a list (empty when unset: the caller picks the default)."""
        value = self.encoder_from or []
        return [value] if isinstance(value, str) else list(value)


class Recipe(StrictConfig):
    task: Literal[
        "sequence-classification",
        "token-classification",
        "sentence-embedding",
        "causal-lm",
        "multi-task",
    ] = "sequence-classification"
    seed: int = 0
    teacher: TeacherConfig | None = None
    student: StudentConfig = StudentConfig()
    data: DataConfig | None = Field(None, description="the data (per task in tasks: instead)")
    tasks: dict[str, TaskEntry] | None = Field(
        None, description="multi-task: one entry (kind, teacher, data) per task"
    )
    multitask: MultiTaskConfig = MultiTaskConfig()
    labels: list[str] | None = Field(None, description="label names in id order (finetune)")
    problem_type: Literal["classification", "regression"] | None = Field(
        None,
        description="finetune from a backbone: default read from the data (numbers that are "
        "not all whole, e.g. STS-B scores, mean regression)",
    )
    stages: list[StageEntry] = Field(min_length=1)
    report: ReportConfig = ReportConfig()
    cache_dir: str | None = Field(
        None, description="teacher-output cache; default $SLIMFORMER_CACHE or ~/.cache/slimformer"
    )

    @model_validator(mode="after")
    def _teacher_when_distilling(self) -> "Recipe":
        if self.task == MULTI_TASK or self.tasks is not None:
            return self._check_multitask()
        if self.data is None:
            raise ValueError("add a `data:` section (data.train at least)")
        if isinstance(self.data.train, list) and self.task != "causal-lm":
            raise ValueError("data.train takes a list of text sources for task: causal-lm only")
        if self.task == "causal-lm":
            self._check_causal_lm()
        for s in self.stages:
            if self.teacher is None and s.kind in ("distill", "prune", "sparsify", "qat"):
                raise ValueError(f"a {s.kind} stage needs a teacher: add `teacher: {{model: ...}}`")
            if getattr(s.config, "crf_kd", "emissions") == "marginals" and not self.student.crf:
                raise ValueError(
                    "crf_kd: marginals distils into a CRF's marginals: set `student: {crf: true}` "
                    "(task: token-classification), or use crf_kd: emissions"
                )
        if self.teacher is None and self.student.model is None:
            raise ValueError("without a teacher, set student.model to the model to fine-tune")
        return self

    def _check_causal_lm(self) -> None:
        for i, s in enumerate(self.stages):
            if s.kind not in ("distill", "finetune"):
                raise ValueError(
                    f"stage {i} ({s.kind}): causal-lm recipes take distill and finetune stages "
                    f"(depth pruning: student.layers with student.layer_selection)"
                )
            used = [k for k in CAUSAL_LM_UNSUPPORTED if getattr(s.config, k, None)]
            if used or getattr(s.config, "rows", "all") != "all":
                raise ValueError(
                    f"stage {i} ({s.kind}): {', '.join(used) or 'rows'} is not supported for "
                    f"causal-lm yet"
                )
            inter = getattr(s.config, "intermediate", None)
            terms = inter.terms if inter is not None else {}
            attention = [t for t in terms if LAYER_LOSSES.get(t).needs == "attention"]
            if attention:
                raise ValueError(
                    f"stage {i} ({s.kind}): {', '.join(attention)} compare attention scores, "
                    f"which decoders with rotary positions do not expose as q.k; for causal-lm "
                    f"use hidden_mse, hidden_cosine or embedding_mse"
                )

    def _check_multitask(self) -> "Recipe":
        where = "put each task's teacher and data under tasks.NAME"
        if self.task != MULTI_TASK:
            raise ValueError(f"`tasks:` is for `task: {MULTI_TASK}` recipes")
        if not self.tasks or len(self.tasks) < 2:
            raise ValueError(f"a {MULTI_TASK} recipe needs `tasks:` with two or more entries")
        if self.teacher is not None or self.data is not None:
            raise ValueError(f"a {MULTI_TASK} recipe has no top-level teacher/data: {where}")
        if self.student.model is not None:
            raise ValueError(
                f"a {MULTI_TASK} student is built from the teachers: use student.layers "
                f"(or width settings), not student.model"
            )
        for i, s in enumerate(self.stages):
            if s.kind not in MULTI_TASK_STAGES:
                raise ValueError(
                    f"stage {i} ({s.kind}): {MULTI_TASK} recipes take "
                    f"{' and '.join(MULTI_TASK_STAGES)} stages; export each task with "
                    f"`slimformer export-task` and compress it with a single-task recipe"
                )
            used = [k for k in MULTI_TASK_UNSUPPORTED if getattr(s.config, k, None) is not None]
            if used or getattr(s.config, "rows", "all") != "all":
                hint = " (augment a task with tasks.NAME.augment)" if "augment" in used else ""
                raise ValueError(
                    f"stage {i} ({s.kind}): {', '.join(used) or 'rows'} is not supported in "
                    f"{MULTI_TASK} recipes yet{hint}"
                )
        return self


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Field names of the config class found at ``loc`` (for 'unknown key' hints)."""
    cls: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        for cand in getattr(ann, "__args__", ()) + (ann,):
            inner = getattr(cand, "__args__", ())
            for c in (cand, *inner):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    cls = c
                    break
            else:
                continue
            break
    return sorted(getattr(cls, "model_fields", {})) or None


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"Invalid recipe {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(Recipe, e["loc"][:-1])
            msg = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            value = e["loc"][-1]
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {loc or '(top)'} | {msg} | {shown[:80]}")
    return "\n".join(lines)


def set_by_path(tree: dict, dotted: str, value: Any) -> None:
    """Apply a CLI override ``a.b.0.c=value`` to the raw recipe tree."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        key: Any = int(part) if isinstance(node, list) else part
        if isinstance(node, dict) and key not in node:
            node[key] = [] if parts[i + 1].isdigit() else {}
        node = node[key]
    last: Any = int(parts[-1]) if isinstance(node, list) else parts[-1]
    node[last] = value


def parse_recipe(tree: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(tree, dict):
        raise RecipeError(f"Recipe {source} must be a YAML mapping, got {type(tree).__name__}.")
    try:
        return Recipe.model_validate(tree)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read YAML, apply ``key.path=value`` overrides (values parsed as YAML), validate."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file {str(path)!r} does not exist.")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"Recipe {path} is not valid YAML: {e}") from None
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise RecipeError(
                f"Override {item!r} must look like key.path=value (e.g. stages.0.distill.epochs=1)."
            )
        set_by_path(tree, key.strip(), yaml.safe_load(raw))
    return parse_recipe(tree, str(path))


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in), as saved in the run folder."""
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
