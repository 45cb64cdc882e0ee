"""The one table of where each model family keeps its layers (and, for pruning, heads and FFN).

Adding a family = one row. Paths are suffixes of module names, so the same row serves the bare
encoder (``BertModel``) and every task head around it (``BertForSequenceClassification``).
"""

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig

from slimformer.errors import ModelError


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # ModuleList of transformer blocks, as a module-name suffix
    num_layers: str  # config attribute holding the depth
    hidden: str = "hidden_size"
    heads: str = "num_attention_heads"
    intermediate: str = "intermediate_size"
    embeddings: str = "embeddings"  # module whose output is the first hidden state
    # attention query/key projections inside a block (layer-wise attention distillation);
    # None where scores are not q.k alone (rotary or relative positions)
    query: str | None = "attention.self.query"
    key: str | None = "attention.self.key"


_DECODER = dict(embeddings="embed_tokens", query=None, key=None)  # rotary: scores need more
ARCHS: dict[str, ArchSpec] = {
    "bert": ArchSpec("encoder.layer", "num_hidden_layers"),
    "roberta": ArchSpec("encoder.layer", "num_hidden_layers"),
    "xlm-roberta": ArchSpec("encoder.layer", "num_hidden_layers"),
    "electra": ArchSpec("encoder.layer", "num_hidden_layers"),
    "deberta-v2": ArchSpec("encoder.layer", "num_hidden_layers", query=None, key=None),
    "distilbert": ArchSpec(
        "transformer.layer",
        "n_layers",
        "dim",
        "n_heads",
        "hidden_dim",
        query="attention.q_lin",
        key="attention.k_lin",
    ),
    "llama": ArchSpec("layers", "num_hidden_layers", **_DECODER),
    "mistral": ArchSpec("layers", "num_hidden_layers", **_DECODER),
    "qwen2": ArchSpec("layers", "num_hidden_layers", **_DECODER),
}


def arch_of(config: PretrainedConfig) -> ArchSpec:
    if config.model_type not in ARCHS:
        raise ModelError(
            f"Model family {config.model_type!r} is not supported for layer "
            f"selection yet. Supported: {', '.join(sorted(ARCHS))}."
        )
    return ARCHS[config.model_type]


def num_layers(config: PretrainedConfig) -> int:
    return int(getattr(config, arch_of(config).num_layers))


def find_module(model: nn.Module, suffix: str) -> nn.Module:
    """The one submodule named ``suffix`` or ``*.suffix`` (first match, outermost first)."""
    for name, module in model.named_modules():
        if name == suffix or name.endswith("." + suffix):
            return module
    raise ModelError(f"Could not find the module {suffix!r} in {type(model).__name__}.")


def layers_module_name(model: nn.Module) -> str:
    """Full module name of the block list, e.g. ``bert.encoder.layer``."""
    suffix = arch_of(model.config).layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == suffix or name.endswith("." + suffix)):
            return name
    raise ModelError(f"Could not find the layer list {suffix!r} in {type(model).__name__}.")
