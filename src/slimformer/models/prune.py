"""Physical removal of attention heads, FFN neurons and whole layers: the weight matrices get
smaller (nothing is masked), so the pruned model is really faster and exports to ONNX with the
smaller shapes.

The per-layer shapes are written into the config (``slimformer_pruning``), which
``save_pretrained`` keeps; ``load_pretrained`` rebuilds those shapes before loading the weights.
When only FFN neurons (the same number in every layer) and layers were removed, the plain
``transformers`` config expresses the shape and ``AutoModel*.from_pretrained`` loads the folder as
well; a model with pruned heads needs ``slimformer.models.prune.load_pretrained``.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from slimformer.errors import ModelError
from slimformer.models.arch import arch_of, layers_module_name, num_layers

PLAN_ATTR = "slimformer_pruning"


@dataclass(frozen=True)
class PruneSpec:
    """Where heads and FFN neurons live inside one block (module-name suffixes)."""

    qkv: tuple[str, ...]  # projections whose output rows are grouped by head
    attn_out: str  # projection whose input columns are grouped by head
    attn_module: str  # module holding num_attention_heads / all_head_size attributes
    ffn_in: tuple[str, ...]  # projections whose output rows are the FFN neurons
    ffn_out: str  # projection whose input columns are the FFN neurons


_BERT_LIKE = PruneSpec(
    qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
    attn_out="attention.output.dense",
    attn_module="attention.self",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
)
PRUNE_SPECS: dict[str, PruneSpec] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
}


def prune_spec(config: PretrainedConfig) -> PruneSpec:
    if config.model_type not in PRUNE_SPECS:
        raise ModelError(
            f"Structured pruning does not support the {config.model_type!r} family yet. "
            f"Supported: {', '.join(sorted(PRUNE_SPECS))}."
        )
    return PRUNE_SPECS[config.model_type]


def blocks(model: PreTrainedModel) -> nn.ModuleList:
    return model.get_submodule(layers_module_name(model))


def head_size(config: PretrainedConfig) -> int:
    spec = arch_of(config)
    return getattr(config, "head_dim", None) or getattr(config, spec.hidden) // getattr(
        config, spec.heads
    )


def current_plan(model: PreTrainedModel) -> dict[str, list[int]]:
    """Per-layer head counts and FFN widths as the weights are now."""
    spec, d = prune_spec(model.config), head_size(model.config)
    heads, ffn = [], []
    for block in blocks(model):
        heads.append(block.get_submodule(spec.qkv[0]).out_features // d)
        ffn.append(block.get_submodule(spec.ffn_out).in_features)
    return {"attention_heads": heads, "intermediate_sizes": ffn}


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0 = output rows, 1 = input columns)."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach())
    return new.to(linear.weight.device)


def _replace(block: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, leaf, new)


def prune_heads(model: PreTrainedModel, keep: dict[int, list[int]]) -> PreTrainedModel:
    """Keep only the listed heads (indices into the layer's current heads) in each given layer."""
    spec, d = prune_spec(model.config), head_size(model.config)
    for layer, heads in keep.items():
        block = blocks(model)[layer]
        have = block.get_submodule(spec.qkv[0]).out_features // d
        if not heads:
            raise ModelError(
                f"Pruning would remove all {have} heads of layer {layer}. Keep at least one "
                f"head per layer, or remove the whole layer (prune.layers)."
            )
        if max(heads) >= have or min(heads) < 0:
            raise ModelError(f"Layer {layer} has {have} heads; cannot keep heads {heads}.")
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in sorted(heads)])
        for name in spec.qkv:
            _replace(block, name, _slice_linear(block.get_submodule(name), rows, 0))
        _replace(block, spec.attn_out, _slice_linear(block.get_submodule(spec.attn_out), rows, 1))
        attn = block.get_submodule(spec.attn_module)
        if hasattr(attn, "num_attention_heads"):
            attn.num_attention_heads = len(heads)
        if hasattr(attn, "all_head_size"):
            attn.all_head_size = len(heads) * d
    _record(model)
    return model


def prune_ffn(model: PreTrainedModel, keep: dict[int, list[int]]) -> PreTrainedModel:
    """Keep only the listed FFN neurons (intermediate channels) in each given layer."""
    spec = prune_spec(model.config)
    for layer, neurons in keep.items():
        block = blocks(model)[layer]
        if not neurons:
            raise ModelError(f"Pruning would remove every FFN neuron of layer {layer}.")
        index = torch.tensor(sorted(neurons))
        for name in spec.ffn_in:
            _replace(block, name, _slice_linear(block.get_submodule(name), index, 0))
        _replace(block, spec.ffn_out, _slice_linear(block.get_submodule(spec.ffn_out), index, 1))
    _record(model)
    return model


def drop_layers(model: PreTrainedModel, drop: list[int]) -> PreTrainedModel:
    """Remove whole layers; the rest are re-indexed 0..k-1 (weights and pruned shapes kept)."""
    n = num_layers(model.config)
    bad = [i for i in drop if not 0 <= i < n]
    if bad or len(set(drop)) >= n:
        raise ModelError(
            f"Cannot drop layers {drop} of a {n}-layer model: indices must be in 0..{n - 1} "
            f"and at least one layer must stay."
        )
    keep = [i for i in range(n) if i not in drop]
    slim = copy.deepcopy(model)
    full = blocks(slim)
    kept = nn.ModuleList([full[i] for i in keep])
    parent, _, leaf = layers_module_name(slim).rpartition(".")
    setattr(slim.get_submodule(parent), leaf, kept)
    setattr(slim.config, arch_of(slim.config).num_layers, len(keep))
    for new_idx, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    _record(slim)
    return slim


def _record(model: PreTrainedModel) -> None:
    """Write the shapes into the config so that save_pretrained keeps them. Uniform FFN widths
    are also written as ``intermediate_size`` (then transformers alone can load the folder)."""
    plan = current_plan(model)
    config = model.config
    spec = arch_of(config)
    full_heads = getattr(config, spec.heads)
    widths = set(plan["intermediate_sizes"])
    if len(widths) == 1:
        setattr(config, spec.intermediate, widths.pop())
    if (
        all(h == full_heads for h in plan["attention_heads"])
        and len(set(plan["intermediate_sizes"])) == 1
    ):
        if hasattr(config, PLAN_ATTR):
            delattr(config, PLAN_ATTR)
        return
    setattr(config, PLAN_ATTR, plan)


def is_pruned(config: PretrainedConfig) -> bool:
    return bool(getattr(config, PLAN_ATTR, None))


def shape_like_plan(model: PreTrainedModel, plan: dict[str, list[int]]) -> PreTrainedModel:
    """Shrink a freshly built (full-shape) model to ``plan`` so the saved weights fit it."""
    heads, widths = plan["attention_heads"], plan["intermediate_sizes"]
    if len(heads) != num_layers(model.config) or len(widths) != len(heads):
        raise ModelError(
            f"config.{PLAN_ATTR} lists {len(heads)} layers but the config has "
            f"{num_layers(model.config)}; the folder's config.json was edited or is corrupt."
        )
    prune_heads(model, {i: list(range(h)) for i, h in enumerate(heads)})
    prune_ffn(model, {i: list(range(w)) for i, w in enumerate(widths)})
    return model


def load_pretrained(auto_class, ref: str, **kwargs) -> PreTrainedModel:
    """``auto_class.from_pretrained``, except that a pruned folder gets its shapes first
    and a GGUF file loads de-quantized with its quantized flags cleared."""
    from slimformer.models.gguf import clear_quantized_flags, is_gguf_ref, split_gguf

    if is_gguf_ref(ref):
        folder, extra = split_gguf(ref)
        return clear_quantized_flags(auto_class.from_pretrained(folder, **extra, **kwargs))
    config = AutoConfig.from_pretrained(
        ref, trust_remote_code=kwargs.get("trust_remote_code", False)
    )
    if not is_pruned(config):
        from slimformer.models.crf import restore_crf

        model = auto_class.from_pretrained(ref, **kwargs)
        restore_crf(model, ref)
        return model
    folder = Path(ref)
    files = sorted(folder.glob("*.safetensors"))
    if not folder.is_dir() or not files:
        raise ModelError(
            f"{ref} is a pruned model ({PLAN_ATTR} in its config) but has no .safetensors "
            f"weights in a local folder; download the folder first."
        )
    model = auto_class.from_config(config)
    shape_like_plan(model, config.__dict__[PLAN_ATTR])
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = {n for n, _ in model.named_parameters()}
    missing = [k for k in missing if k in params and not _is_tied(model, k)]
    if missing or unexpected:
        raise ModelError(
            f"Pruned weights in {ref} do not fit the recorded shapes (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})."
        )
    return model.eval()


def _is_tied(model: PreTrainedModel, key: str) -> bool:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return key in tied
