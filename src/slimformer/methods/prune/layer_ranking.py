"""Which decoder layers a depth-pruned student keeps, from the teacher's own hidden states on
calibration text:

- ``block_influence`` (ShortGPT, Men et al. 2024): BI_i = 1 - mean cos(h_in, h_out) of block i;
  the layers that change their input least are dropped.
- ``angular`` (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"):
  drop the contiguous run of n layers whose input and output are closest in angle.
- ``greedy_kl``: drop the blocks whose removal changes the model's outputs least (KL to the
  full model), re-measured after each round of removals. Slower (one forward pass per
  remaining block per round) but it sees how removals interact, which one-shot scores miss.
"""

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from slimformer.models.arch import layers_module_name

if TYPE_CHECKING:
    from slimformer.tasks.base import Aligned


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


def greedy_round_sizes(layers: int, keep: int) -> list[int]:
    """How many blocks each greedy round drops: a third of what is left to drop (at least
    one), so the early, cheap-to-decide removals go in batches and the last ones one by one;
    30 -> 14 blocks takes 6 rounds of scoring (123 trial passes) instead of 16 (360)."""
    sizes, left = [], layers - keep
    while left > 0:
        sizes.append(max(1, math.ceil(left / 3)))
        left -= sizes[-1]
    return sizes


def _swap_layers(model: PreTrainedModel, layers: list[torch.nn.Module]) -> None:
    parent_name, _, attr = layers_module_name(model).rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, torch.nn.ModuleList(layers))


def _mean_kl(reference: list[torch.Tensor], outputs: list, masks: list[torch.Tensor]) -> float:
    """Mean KL(teacher || pruned) over the real positions of every calibration batch."""
    total, count = 0.0, 0
    for ref, out, mask in zip(reference, outputs, masks, strict=True):
        logq = torch.log_softmax(out.values[mask].float(), dim=-1)
        logp = ref.float()
        total += float((logp.exp() * (logp - logq)).sum())
        count += int(mask.sum())
    return total / max(count, 1)


@torch.inference_mode()
def keep_by_greedy_divergence(
    model: PreTrainedModel,
    forward: Callable[[PreTrainedModel, dict], "Aligned"],
    batches: Iterable[dict],
    keep: int,
    precision: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[list[int], list[dict]]:
    """Drop the blocks whose removal moves the model's outputs least from the full model's
    (KL on the calibration rows): the "loss increase" criterion (Kim et al. 2024, Shortened
    LLaMA), re-scored after each round of removals (``greedy_round_sizes``) so that later
    choices see the earlier ones. Returns the kept blocks and, per removal, the block dropped,
    the KL its removal alone caused in its round, and the KL left after each round."""
    layers = list(model.get_submodule(layers_module_name(model)))
    batches = list(batches)
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    reference, masks = [], []
    with precision():
        for batch in batches:
            out = forward(model, batch)
            reference.append(torch.log_softmax(out.values[out.mask].float(), -1).bfloat16())
            masks.append(out.mask)
    kept, trace = list(range(len(layers))), []
    sizes = greedy_round_sizes(len(layers), keep)
    trials = sum(len(layers) - sum(sizes[:i]) for i in range(len(sizes)))
    try:
        with tqdm(total=trials, desc="greedy layer removal", unit="trial") as bar:
            for size in sizes:
                scores = {}
                for block in kept:
                    _swap_layers(model, [layers[i] for i in kept if i != block])
                    with precision():
                        outputs = [forward(model, b) for b in batches]
                    scores[block] = _mean_kl(reference, outputs, masks)
                    bar.update(1)
                for drop in sorted(kept, key=scores.__getitem__)[:size]:
                    kept.remove(drop)
                    trace.append({"dropped": drop, "kl_alone": round(scores[drop], 5)})
                if size == 1:  # the round's only removal was scored with exactly these blocks
                    left = scores[trace[-1]["dropped"]]
                else:
                    _swap_layers(model, [layers[i] for i in kept])
                    with precision():
                        left = _mean_kl(reference, [forward(model, b) for b in batches], masks)
                trace[-1]["kl_after_round"] = round(left, 5)
                bar.set_postfix(kept=len(kept), kl=f"{left:.3f}")
    finally:
        _swap_layers(model, layers)
        if use_cache is not None:
            model.config.use_cache = use_cache
    return kept, trace
