"""Which ONNX node computes which PyTorch module: the bridge between QAT (fake quantization
on ``nn.Linear`` / ``nn.Embedding``) and ONNX Runtime's quantizer (which names graph nodes and
tensors). Nodes are matched by their weights' values, not by names, so the mapping holds for any
architecture and exporter naming scheme.

- A Linear exports as ``MatMul(x, W.T)`` (+ ``Add`` for the bias): the site is the MatMul node
  and its activation input ``x``.
- An Embedding exports as ``Gather(table, ids)``.
Linears exported as ``Gemm`` (2-D inputs, e.g. a pooler or classifier head) are not sites: ORT's
static path here quantizes MatMul and Gather only, and both sides must quantize the same set.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn


@dataclass
class QuantSites:
    linears: dict[str, tuple[str, str]] = field(default_factory=dict)  # module -> (node, input)
    embeddings: dict[str, str] = field(default_factory=dict)  # module -> Gather node

    @property
    def nodes(self) -> list[str]:
        return [node for node, _ in self.linears.values()] + list(self.embeddings.values())


def _key(array: np.ndarray) -> tuple:
    flat = array.reshape(-1)
    probe = flat[:: max(1, flat.size // 16)][:16]
    return (array.shape, probe.tobytes())


def find_sites(onnx_path: Path, model: nn.Module) -> QuantSites:
    """MatMul and Gather nodes of ``onnx_path`` whose weights are a Linear's (transposed) or an
    Embedding's of ``model``."""
    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    linears: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    tables: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            w = module.weight.detach().float().cpu().numpy().T
            linears.setdefault(_key(w), []).append((name, w))
        elif isinstance(module, nn.Embedding):
            w = module.weight.detach().float().cpu().numpy()
            tables.setdefault(_key(w), []).append((name, w))
    sites = QuantSites()
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            found = _match(numpy_helper.to_array(inits[node.input[1]]), linears)
            if found is not None:
                sites.linears.setdefault(found, (node.name, node.input[0]))
        elif node.op_type == "Gather" and node.input[0] in inits:
            found = _match(numpy_helper.to_array(inits[node.input[0]]), tables)
            if found is not None:
                sites.embeddings.setdefault(found, node.name)
    return sites


def _match(array: np.ndarray, candidates: dict[tuple, list[tuple[str, np.ndarray]]]) -> str | None:
    if array.dtype != np.float32:
        return None
    for name, w in candidates.get(_key(array), []):
        if np.array_equal(w, array):
            return name
    return None
