"""Unstructured magnitude pruning: the smallest Linear weights (globally or per layer) are set to
zero on a cubic schedule (Zhu & Gupta, 2017), and their gradients are masked while the model
recovers, so they stay zero; nothing is reparametrised, so the saved folder is a plain
``save_pretrained`` folder. Dense kernels do not skip zeros: this saves size after compression,
not time (the report measures both)."""

import gzip
from pathlib import Path

import torch
from torch import nn

from slimformer.models.prune import blocks


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The Linear weights inside the transformer blocks (embeddings and the head stay dense)."""
    out = {}
    for i, block in enumerate(blocks(model)):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                out[f"{i}.{name}"] = module.weight
    return out


def cubic_sparsity(final: float, step: int, steps: int) -> float:
    """Sparsity after ``step`` of ``steps``: fast at first, gentle near the end."""
    return final * (1 - (1 - step / steps) ** 3)


@torch.no_grad()
def magnitude_masks(
    weights: dict[str, torch.Tensor], sparsity: float, scope: str = "global"
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks with ``sparsity`` of the weights (lowest |w|) set to False."""
    if sparsity <= 0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    if scope == "global":
        flat = torch.cat([w.abs().flatten() for w in weights.values()])
        k = int(sparsity * flat.numel())
        threshold = flat.kthvalue(k).values if k > 0 else flat.min() - 1
        return {n: w.abs() > threshold for n, w in weights.items()}
    masks = {}
    for n, w in weights.items():
        k = int(sparsity * w.numel())
        threshold = w.abs().flatten().kthvalue(k).values if k > 0 else w.abs().min() - 1
        masks[n] = w.abs() > threshold
    return masks


@torch.no_grad()
def apply_masks(weights: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> list:
    """Zero the masked weights and keep their gradients at zero; returns hook handles."""
    handles = []
    for n, w in weights.items():
        w.mul_(masks[n])
        handles.append(w.register_hook(lambda g, m=masks[n]: g * m.to(g.device)))
    return handles


def sparsity_of(weights: dict[str, torch.Tensor]) -> float:
    total = sum(w.numel() for w in weights.values())
    return sum(int((w == 0).sum()) for w in weights.values()) / max(total, 1)


def gzip_size_mb(folder: Path) -> float:
    """Size of the weights after gzip: what zeros save when the model is shipped compressed."""
    total = 0
    for f in Path(folder).glob("*.safetensors"):
        total += len(gzip.compress(f.read_bytes(), compresslevel=6))
    return total / 2**20
