"""GGUF teachers (llama.cpp files): ``transformers`` loads them as ordinary models,
de-quantized to fp32, with their tokenizer and chat template.

A reference to a GGUF file is its path (or ``package:NAME/file.gguf``); ``from_pretrained``
needs it split into the folder and ``gguf_file=NAME``. The loaded model keeps a "quantized"
flag and ``config.quantization_config`` although its weights are plain fp32 tensors, and
``transformers``/``accelerate`` refuse to train or save a copy of it until both are cleared.
"""

from pathlib import Path

from transformers import PreTrainedModel

GGUF_SUFFIX = ".gguf"


def is_gguf_ref(ref: str) -> bool:
    return str(ref).lower().endswith(GGUF_SUFFIX)


def split_gguf(ref: str) -> tuple[str, dict]:
    """``path/to/model.gguf`` -> (``path/to``, ``{"gguf_file": "model.gguf"}``); other
    references pass through with no extra arguments."""
    if not is_gguf_ref(ref):
        return ref, {}
    path = Path(ref)
    return str(path.parent), {"gguf_file": path.name}


def clear_quantized_flags(model: PreTrainedModel) -> PreTrainedModel:
    """The weights are de-quantized already: drop the flags that block training and saving."""
    for attr in ("is_quantized", "hf_quantizer", "quantization_method"):
        if getattr(model, attr, None):
            setattr(model, attr, None if attr != "is_quantized" else False)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model
