"""Which decoder layers a depth-pruned student keeps, from the teacher's own hidden states on
calibration text:

- ``block_influence`` (ShortGPT, Men et al. 2024): BI_i = 1 - mean cos(h_in, h_out) of block i;
  the layers that change their input least are dropped.
- ``angular`` (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"):
  drop the contiguous run of n layers whose input and output are closest in angle.
"""

import math
from collections.abc import Iterable

import torch
from transformers import PreTrainedModel

from slimformer.models.arch import layers_module_name


@torch.inference_mode()
def layer_states_cosines(model: PreTrainedModel, batches: Iterable[dict]) -> torch.Tensor:
    """(L + 1, L + 1) mean cosine between the residual stream before block i and before block
    j (index L = after the last block), over every real token of ``batches``."""
    layers = model.get_submodule(layers_module_name(model))
    states: list[torch.Tensor] = []

    def grab_input(_module, args, kwargs):
        if not states:
            states.append(args[0] if args else kwargs["hidden_states"])

    def grab_output(_module, _args, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    hooks = [layers[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
    hooks += [layer.register_forward_hook(grab_output) for layer in layers]
    n = len(layers) + 1
    total, count = torch.zeros(n, n, dtype=torch.float64), 0
    try:
        for batch in batches:
            states.clear()
            model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
            mask = batch["attention_mask"].bool().reshape(-1)
            flat = [
                torch.nn.functional.normalize(s.float().reshape(-1, s.shape[-1])[mask], dim=-1)
                for s in states
            ]
            stacked = torch.stack(flat)  # (n, T, H)
            total += torch.einsum("ith,jth->ij", stacked, stacked).double().cpu()
            count += int(mask.sum())
    finally:
        for h in hooks:
            h.remove()
    return (total / max(count, 1)).float()


def keep_by_block_influence(cos: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` blocks with the highest influence 1 - cos(in, out), in order."""
    n = cos.shape[0] - 1
    influence = torch.tensor([1 - cos[i, i + 1] for i in range(n)])
    return sorted(influence.argsort(descending=True)[:keep].tolist())


def keep_by_angular_distance(cos: torch.Tensor, keep: int) -> list[int]:
    """Drop the run of ``n - keep`` blocks whose ends are closest in angle (arccos / pi)."""
    n = cos.shape[0] - 1
    drop = n - keep
    if drop <= 0:
        return list(range(n))
    dist = [
        math.acos(max(-1.0, min(1.0, float(cos[i, i + drop])))) / math.pi
        for i in range(n - drop + 1)
    ]
    start = min(range(len(dist)), key=dist.__getitem__)
    return [i for i in range(n) if not start <= i < start + drop]


def layer_scores(cos: torch.Tensor) -> dict:
    """Per-block influence, for the report."""
    n = cos.shape[0] - 1
    return {"block_influence": [round(float(1 - cos[i, i + 1]), 5) for i in range(n)]}
