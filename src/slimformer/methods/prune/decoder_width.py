"""Width pruning of Llama-family decoders (Minitron-style, Muralidharan et al. 2024): MLP
channels and whole grouped-query attention groups are ranked by their activations on
calibration text and physically removed, the same number in every layer, so the result is a
plain config (``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``) that ``AutoModelForCausalLM.from_pretrained`` loads as is.

- MLP channel j: mean |act(gate_j(x)) * up_j(x)| (the input of ``down_proj``); rows of
  gate/up and columns of down are kept for the top channels.
- Attention group g (one key/value head and the query heads that share it): mean L2 norm of
  its heads' outputs (the input of ``o_proj``); q rows, k/v rows and o columns of kept groups.
"""

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PreTrainedModel

from slimformer.errors import ModelError
from slimformer.models.arch import layers_module_name

WIDTH_FAMILIES = ("llama", "mistral", "qwen2")


def _blocks(model: PreTrainedModel) -> nn.ModuleList:
    if model.config.model_type not in WIDTH_FAMILIES:
        raise ModelError(
            f"Decoder width pruning supports {', '.join(WIDTH_FAMILIES)}, not "
            f"{model.config.model_type!r}."
        )
    return model.get_submodule(layers_module_name(model))


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.inference_mode()
def width_importance(model: PreTrainedModel, batches: Iterable[dict]) -> dict[str, list]:
    """Per layer: MLP channel scores (intermediate,) and attention group scores (kv_heads,)."""
    cfg, d = model.config, head_dim(model.config)
    kv = cfg.num_key_value_heads
    blocks = _blocks(model)
    mlp = [torch.zeros(b.mlp.down_proj.in_features, dtype=torch.float64) for b in blocks]
    groups = [torch.zeros(kv, dtype=torch.float64) for _ in blocks]
    hooks = []
    for i, block in enumerate(blocks):

        def on_down(_m, args, i=i):
            mlp[i] += args[0].float().abs().reshape(-1, args[0].shape[-1]).sum(0).double()

        def on_o(_m, args, i=i):
            x = args[0].float().reshape(-1, kv, args[0].shape[-1] // (kv * d), d)
            groups[i] += x.norm(dim=-1).sum(dim=(0, 2)).double()

        hooks += [
            block.mlp.down_proj.register_forward_pre_hook(on_down),
            block.self_attn.o_proj.register_forward_pre_hook(on_o),
        ]
    try:
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    finally:
        for h in hooks:
            h.remove()
    return {"mlp": [m.float() for m in mlp], "groups": [g.float() for g in groups]}


def _keep_rows(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = None if linear.bias is None else linear.bias.detach()
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def prune_decoder_width(
    model: PreTrainedModel,
    scores: dict[str, list],
    intermediate_size: int | None = None,
    kv_heads: int | None = None,
) -> PreTrainedModel:
    """Keep the ``intermediate_size`` best MLP channels and ``kv_heads`` best attention groups
    in every layer (in place); the config is updated to the new uniform shapes."""
    cfg, d = model.config, head_dim(model.config)
    blocks = _blocks(model)
    if intermediate_size is not None:
        if not 0 < intermediate_size <= cfg.intermediate_size:
            raise ModelError(
                f"width pruning: intermediate_size {intermediate_size} must be in "
                f"1..{cfg.intermediate_size} (the model's MLP width)."
            )
        for block, score in zip(blocks, scores["mlp"], strict=True):
            keep = score.argsort(descending=True)[:intermediate_size].sort().values
            mlp = block.mlp
            mlp.gate_proj = _keep_rows(mlp.gate_proj, keep, 0)
            mlp.up_proj = _keep_rows(mlp.up_proj, keep, 0)
            mlp.down_proj = _keep_rows(mlp.down_proj, keep, 1)
        cfg.intermediate_size = intermediate_size
    if kv_heads is not None:
        kv, heads = cfg.num_key_value_heads, cfg.num_attention_heads
        if not 0 < kv_heads <= kv:
            raise ModelError(
                f"width pruning: kv_heads {kv_heads} must be in 1..{kv} (the model's key/value "
                f"heads; each keeps the {heads // kv} query heads that share it)."
            )
        per_group = heads // kv
        for block, score in zip(blocks, scores["groups"], strict=True):
            groups = score.argsort(descending=True)[:kv_heads].sort().values.tolist()
            q_rows = torch.tensor(
                [r for g in groups for r in range(g * per_group * d, (g + 1) * per_group * d)]
            )
            kv_rows = torch.tensor([r for g in groups for r in range(g * d, (g + 1) * d)])
            attn = block.self_attn
            attn.q_proj = _keep_rows(attn.q_proj, q_rows, 0)
            attn.k_proj = _keep_rows(attn.k_proj, kv_rows, 0)
            attn.v_proj = _keep_rows(attn.v_proj, kv_rows, 0)
            attn.o_proj = _keep_rows(attn.o_proj, q_rows, 1)
            attn.num_key_value_groups = per_group
        cfg.head_dim = d  # no longer hidden_size / heads: keep it explicit
        cfg.num_attention_heads = kv_heads * per_group
        cfg.num_key_value_heads = kv_heads
    return model
