"""Build a student from the teacher: a subset of its layers (DistilBERT-style weight copy),
a narrower random model of the same family, or an existing model folder."""

import copy
from typing import Literal

from pydantic import Field, model_validator
from transformers import PreTrainedModel

from slimformer.config import StrictConfig
from slimformer.errors import ModelError, RecipeError
from slimformer.models.arch import arch_of, layers_module_name, num_layers
from slimformer.models.lora import LoraSettings


class WidthPruning(StrictConfig):
    """Decoder width pruning after the depth choice (Llama family): the same width per layer."""

    intermediate_size: int | None = Field(None, gt=0, description="MLP channels kept")
    kv_heads: int | None = Field(
        None, gt=0, description="key/value heads kept, each with the query heads sharing it"
    )


class StudentConfig(StrictConfig):
    """Exactly one way to make the student: ``layers``, a width change, or ``model``."""

    layers: int | list[int] | None = Field(
        None, description="N (evenly picked) or teacher layer indices to copy, 0-based"
    )
    hidden_size: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)
    layer_selection: Literal["even", "block_influence", "angular", "greedy_kl"] = Field(
        "even",
        description="with layers: N, which teacher layers are kept: evenly spread, the N of "
        "highest block influence (ShortGPT), all but the contiguous run closest in angle "
        "(Gromov et al.), or greedy removal of the blocks whose absence changes the outputs "
        "least (KL to the teacher, re-scored after each round of removals); measured on the first "
        "selection_examples training rows",
    )
    selection_examples: int = Field(
        32, gt=0, description="rows used by layer_selection and width_pruning"
    )
    selection_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="the teacher's passes for layer_selection: fp32, or bf16 autocast "
        "(several times faster where the CPU has bf16 units; greedy_kl runs many passes)",
    )
    width_pruning: WidthPruning | None = Field(
        None,
        description="causal LMs: remove MLP channels / attention groups of lowest activation "
        "(Minitron), after the layers are chosen",
    )
    model: str | None = Field(None, description="existing model folder or hub id")
    crf: bool = Field(False, description="token classification: add an IOB2-constrained CRF")
    lora: LoraSettings | None = Field(
        None,
        description="train LoRA adapters on the student instead of its weights (merged into "
        "the saved model); with student.model = the teacher: self-distillation",
    )

    @model_validator(mode="after")
    def _one_way(self) -> "StudentConfig":
        width = any(
            v is not None for v in (self.hidden_size, self.num_heads, self.intermediate_size)
        )
        if self.model is not None and (width or self.layers is not None):
            raise ValueError("student.model cannot be combined with layers or width settings")
        if isinstance(self.layers, int) and self.layers < 1:
            raise ValueError(f"student.layers must be >= 1, got {self.layers}")
        if self.hidden_size and self.num_heads and self.hidden_size % self.num_heads:
            raise ValueError(
                f"student.hidden_size ({self.hidden_size}) must be divisible by "
                f"student.num_heads ({self.num_heads})"
            )
        return self


def evenly_spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers to copy, spread from the first to the last (the last feeds the head)."""
    if student_layers > teacher_layers:
        raise ModelError(
            f"The student asks for {student_layers} layers but the teacher has only "
            f"{teacher_layers}. Use student.layers <= {teacher_layers}."
        )
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [int(i * step + 0.5) for i in range(student_layers)]


def resolve_layers(cfg: StudentConfig, teacher_layers: int) -> list[int] | None:
    if cfg.layers is None:
        return None
    if isinstance(cfg.layers, int):
        return evenly_spaced_layers(teacher_layers, cfg.layers)
    bad = [i for i in cfg.layers if not 0 <= i < teacher_layers]
    if bad or len(set(cfg.layers)) != len(cfg.layers):
        raise RecipeError(
            f"student.layers {cfg.layers} must be distinct teacher layer indices in "
            f"0..{teacher_layers - 1} (the teacher has {teacher_layers} layers)."
        )
    if len(cfg.layers) > teacher_layers:
        raise ModelError(
            f"More student layers ({len(cfg.layers)}) than the teacher has ({teacher_layers})."
        )
    return sorted(cfg.layers)


def copy_layers(teacher: PreTrainedModel, keep: list[int]) -> PreTrainedModel:
    """Student = teacher with only the ``keep`` layers (weights copied, re-indexed 0..k-1)."""
    from slimformer.models.prune import drop_layers, is_pruned

    if is_pruned(teacher.config):  # per-layer shapes differ from the config: keep them
        n = num_layers(teacher.config)
        return drop_layers(teacher, [i for i in range(n) if i not in keep])
    config = copy.deepcopy(teacher.config)
    setattr(config, arch_of(config).num_layers, len(keep))
    student = type(teacher)(config)
    prefix = layers_module_name(teacher) + "."
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix) :].split(".", 1)
            if int(idx) not in keep:
                continue
            key = f"{prefix}{keep.index(int(idx))}.{rest}"
        state[key] = value.clone()
    student.load_state_dict(state, strict=True)
    return student


def narrower_random(teacher: PreTrainedModel, cfg: StudentConfig) -> PreTrainedModel:
    """Random-init student of the teacher's family with the requested depth/width."""
    config = copy.deepcopy(teacher.config)
    config.__dict__.pop("slimformer_pruning", None)  # a pruned teacher's shapes are not ours
    spec = arch_of(config)
    if cfg.layers is not None:
        n = cfg.layers if isinstance(cfg.layers, int) else len(cfg.layers)
        if n > num_layers(config):
            evenly_spaced_layers(num_layers(config), n)  # raises the clear error
        setattr(config, spec.num_layers, n)
    for attr, value in (
        (spec.hidden, cfg.hidden_size),
        (spec.heads, cfg.num_heads),
        (spec.intermediate, cfg.intermediate_size),
    ):
        if value is not None:
            setattr(config, attr, value)
    hidden, heads = getattr(config, spec.hidden), getattr(config, spec.heads)
    if hidden % heads:
        raise RecipeError(
            f"Student hidden size {hidden} is not divisible by its {heads} heads; "
            f"set student.num_heads so that it divides student.hidden_size."
        )
    return type(teacher)(config)


def derive_student(
    teacher: PreTrainedModel, cfg: StudentConfig, keep: list[int] | None = None
) -> tuple[PreTrainedModel, dict]:
    """Make the student from the teacher; returns it and a description for the report.
    ``keep``: the teacher layers to copy when already chosen (e.g. by block influence)."""
    width = any(v is not None for v in (cfg.hidden_size, cfg.num_heads, cfg.intermediate_size))
    if width:
        return narrower_random(teacher, cfg), {
            "init": "random",
            **cfg.model_dump(exclude_none=True),
        }
    keep = keep or resolve_layers(cfg, num_layers(teacher.config))
    if keep is None:
        raise RecipeError(
            "student needs one of: layers, hidden_size/num_heads/intermediate_size, or model."
        )
    return copy_layers(teacher, keep), {"init": "teacher_layers", "teacher_layers": keep}
