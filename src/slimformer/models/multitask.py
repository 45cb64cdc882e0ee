"""One encoder, one head per task: the multi-task student.

Each head is an ordinary ``transformers`` task model (``BertForSequenceClassification``,
``BertForTokenClassification``, ...) whose base model is the shared encoder. The head holds the
encoder as a plain attribute, not a registered sub-module, so the encoder's weights are trained,
checkpointed and saved once. ``forward_all`` runs the encoder once and every head on its output:
one pass answers every task.

Folder layout (``save_pretrained``)::

    multitask.json                 {"format": 1, "tasks": {NAME: {"task": KIND}}}
    encoder/                       the shared encoder (an AutoModel folder)
    heads/NAME/config.json         the task model's config (labels, problem type, architecture)
    heads/NAME/head.safetensors    the task model's weights outside the encoder (classifier, CRF)
    tokenizer files

``export_task`` writes one task as a standard folder that ``AutoModelFor*`` and ``pipeline()``
load.
"""

import copy
import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from slimformer.errors import ModelError
from slimformer.models.crf import CRF_ATTR, attach_crf

MANIFEST = "multitask.json"
HEAD_WEIGHTS = "head.safetensors"
# Config fields that belong to a task head, not to the shared encoder.
TASK_FIELDS = ("id2label", "label2id", "problem_type", "architectures", CRF_ATTR)


def _set_base(head: PreTrainedModel, module: nn.Module) -> None:
    """Point ``head``'s base model at ``module`` without registering it as a sub-module."""
    prefix = head.base_model_prefix
    head._modules.pop(prefix, None)
    object.__setattr__(head, prefix, module)


class _Replay(nn.Module):
    """Stands in for the encoder: returns outputs computed once, whatever it is called with."""

    def __init__(self, outputs) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, *args, **kwargs):
        return self.outputs


class MultiTaskModel(nn.Module):
    def __init__(
        self, encoder: PreTrainedModel, heads: dict[str, PreTrainedModel], kinds: dict[str, str]
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict()
        for name, head in heads.items():
            _set_base(head, encoder)
            self.heads[name] = head
        self.kinds = dict(kinds)  # task name -> task kind (sequence-classification, ...)

    @property
    def config(self):
        return self.encoder.config

    @property
    def task_names(self) -> list[str]:
        return list(self.heads)

    def head(self, name: str) -> PreTrainedModel:
        if name not in self.heads:
            raise ModelError(f"No task {name!r} in this model; it has {', '.join(self.heads)}.")
        return self.heads[name]

    def forward(self, task: str, **inputs):
        return self.head(task)(**inputs)

    def forward_all(self, **inputs) -> dict[str, torch.Tensor]:
        """Every task's logits from one encoder pass."""
        encoded = self.encoder(**inputs)
        out = {}
        for name, head in self.heads.items():
            _set_base(head, _Replay(encoded))
            try:
                out[name] = head(**inputs).logits
            finally:
                _set_base(head, self.encoder)
        return out

    def save_pretrained(self, folder: str | Path, **kwargs) -> None:
        """The multi-task folder (see the module docstring); ``kwargs`` are accepted for
        ``save_pretrained`` compatibility (weights are always safetensors)."""
        folder = Path(folder)
        self.encoder.save_pretrained(folder / "encoder", safe_serialization=True)
        for name, head in self.heads.items():
            target = folder / "heads" / name
            head.config.save_pretrained(target)
            state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
            save_file(state, str(target / HEAD_WEIGHTS), metadata={"format": "pt"})
        manifest = {"format": 1, "tasks": {n: {"task": k} for n, k in self.kinds.items()}}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    def standalone(self, name: str) -> PreTrainedModel:
        """One task as an ordinary single-task model (a copy: encoder + that head)."""
        head = self.head(name)
        model = _head_class(head.config)(copy.deepcopy(head.config))
        if getattr(head, "crf", None) is not None:
            attach_crf(model)
        base = getattr(model, model.base_model_prefix)
        missing = base.load_state_dict(self.encoder.state_dict(), strict=False).missing_keys
        if missing:
            raise ModelError(f"Task {name!r}: the shared encoder lacks weights {missing[:4]}.")
        prefix = model.base_model_prefix + "."
        result = model.load_state_dict(head.state_dict(), strict=False)
        left = [k for k in result.missing_keys if not k.startswith(prefix)]
        if left or result.unexpected_keys:
            raise ModelError(f"Task {name!r}: head weights do not fit ({left or result}).")
        return model.eval()


def _head_class(config) -> type[PreTrainedModel]:
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise ModelError(f"Head config names no known architecture ({names}).")
    return cls


def is_multitask_folder(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def head_config(encoder_config, teacher_config):
    """The encoder's config with a teacher's task fields (labels, problem type, class)."""
    config = copy.deepcopy(encoder_config)
    config.__dict__.pop(CRF_ATTR, None)  # a CRF is the head's choice (attach_crf sets it)
    for field in TASK_FIELDS:
        if hasattr(teacher_config, field):
            setattr(config, field, copy.deepcopy(getattr(teacher_config, field)))
    return config


def average_encoder_weights(target: PreTrainedModel, others: list[PreTrainedModel]) -> None:
    """Set ``target``'s base-model weights to the mean over it and ``others`` (students copied
    from teachers fine-tuned from one backbone, so their weights are comparable: a uniform
    model soup). A weight some models lack (a pooler) is averaged over those that have it."""
    base = getattr(target, target.base_model_prefix)
    states = [getattr(m, m.base_model_prefix).state_dict() for m in others]
    merged = {}
    for key, value in base.state_dict().items():
        if not value.is_floating_point():
            continue
        found = [s[key] for s in states if key in s]
        for other in found:
            if other.shape != value.shape:
                raise ModelError(
                    f"Cannot average encoders: {key} is {tuple(value.shape)} in one and "
                    f"{tuple(other.shape)} in another; list sources of one architecture."
                )
        merged[key] = torch.stack([value, *found]).mean(dim=0)
    base.load_state_dict(merged, strict=False)


def build_multitask(
    source: PreTrainedModel,
    teachers: dict[str, PreTrainedModel],
    kinds: dict[str, str],
    crf_tasks: tuple[str, ...] = (),
) -> MultiTaskModel:
    """The shared encoder from ``source`` (a student derived from one teacher); each head a copy
    of its teacher's head on the encoder's config. Encoder weights ``source`` lacks (e.g. the
    pooler of a token-classification model) come from the first teacher that has them."""
    base = getattr(source, source.base_model_prefix)
    encoder = AutoModel.from_config(copy.deepcopy(source.config))
    missing = set(encoder.load_state_dict(base.state_dict(), strict=False).missing_keys)
    for teacher in teachers.values():
        if not missing:
            break
        donor = getattr(teacher, teacher.base_model_prefix).state_dict()
        found = {k: donor[k] for k in missing if k in donor}
        encoder.load_state_dict(found, strict=False)
        missing -= set(found)
    heads = {}
    for name, teacher in teachers.items():
        config = head_config(source.config, teacher.config)
        config.architectures = [type(teacher).__name__]
        head = type(teacher)(config)
        prefix = head.base_model_prefix + "."
        mine = head.state_dict()
        own = {
            k: v
            for k, v in teacher.state_dict().items()
            if not k.startswith(prefix) and k in mine and mine[k].shape == v.shape
        }
        head.load_state_dict(own, strict=False)
        if name in crf_tasks:
            attach_crf(head)
        heads[name] = head
    return MultiTaskModel(encoder, heads, kinds)


def load_multitask(folder: str | Path) -> MultiTaskModel:
    """A folder written by ``MultiTaskModel.save_pretrained``."""
    from slimformer.models.prune import load_pretrained

    folder = Path(folder)
    if not is_multitask_folder(folder):
        raise ModelError(f"{folder} is not a multi-task model folder (no {MANIFEST}).")
    manifest = json.loads((folder / MANIFEST).read_text())
    encoder = load_pretrained(AutoModel, str(folder / "encoder"))
    heads = {}
    for name in manifest["tasks"]:
        config = AutoConfig.from_pretrained(folder / "heads" / name)
        head = _head_class(config)(config)
        if getattr(config, CRF_ATTR, False):
            attach_crf(head)
        _set_base(head, encoder)
        head.load_state_dict(load_file(str(folder / "heads" / name / HEAD_WEIGHTS)), strict=True)
        heads[name] = head
    kinds = {n: t["task"] for n, t in manifest["tasks"].items()}
    return MultiTaskModel(encoder, heads, kinds).eval()


class TaskView:
    """One task of a multi-task model (possibly wrapped, e.g. by DDP), used like a single-task
    model: calls go through the wrapper's forward (so gradients sync), attributes (``config``,
    ``crf``) come from the head, and train/eval switch the whole model."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self.model = model
        self.name = name

    def __call__(self, **inputs):
        return self.model(task=self.name, **inputs)

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True) -> "TaskView":
        self.model.train(mode)
        return self

    def eval(self) -> "TaskView":
        return self.train(False)

    def parameters(self):
        return self.model.parameters()

    def __getattr__(self, attr: str):
        core = getattr(self.model, "module", self.model)
        return getattr(core.head(self.name), attr)


def export_task(folder: str | Path, name: str, output: str | Path) -> Path:
    """Write task ``name`` of a multi-task folder as a standard ``transformers`` folder (encoder
    + that head, and the tokenizer), atomically."""
    from transformers import AutoTokenizer

    from slimformer.utils.atomic import atomic_dir

    model = load_multitask(folder).standalone(name)
    output = Path(output)
    with atomic_dir(output) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(folder).save_pretrained(tmp)
    return output
