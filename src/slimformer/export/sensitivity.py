"""Mixed precision by measurement: which layers cost most accuracy when quantized, kept FP32.

1. The quantizable nodes (MatMul / Gather / Attention / Gemm with weights) are grouped by
   layer, from their names (``.../layer.3/...`` -> ``layer 3``; embeddings; the head).
2. Leave-one-out: the model quantized with every group but one, for each group, is run on
   held-out rows; the closer its outputs come to the FP32 model's (mean squared difference),
   the more that group's quantization costs.
3. Greedy: the costliest groups go back to FP32 one at a time until the primary metric on the
   held-out rows is within ``max_drop`` points of FP32 (or ``max_fp32_groups`` are out).

Excluded layers stay FP32: ONNX Runtime's CPU provider has no faster FP16/BF16 MatMul to
offer instead. Static quantization calibrates once (a calibration cache) for all candidates.
"""

import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from pydantic import Field

from slimformer.config import StrictConfig
from slimformer.export.onnx_export import ONNX_FILE, UNFUSED_FILE

log = logging.getLogger("slimformer")
WEIGHTED_OPS = ("MatMul", "Gather", "Attention", "Gemm", "EmbedLayerNormalization")
_LAYER = re.compile(r"(?:layers?|h|blocks?)[./_](\d+)(?:[./_]|$)")


class SensitivityConfig(StrictConfig):
    examples: int = Field(
        500, gt=0, description="held-out training rows (after the calibration rows) measured"
    )
    max_drop: float = Field(
        0.5, ge=0, description="points of the primary metric allowed on those rows"
    )
    max_fp32_groups: int | None = Field(None, ge=0, description="at most this many layers FP32")


def node_groups(onnx_path: Path) -> dict[str, list[str]]:
    """Quantizable node names by layer, in graph order. Fused nodes without a layer in their
    name (ORT's ``Attention_3``) belong to the layer of the next named node: a fused block
    comes just before the rest of its layer in the graph."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    weighted = [
        n for n in graph.node if n.op_type in WEIGHTED_OPS and any(i in inits for i in n.input)
    ]
    labels: list[str | None] = []
    for node in weighted:
        found = _LAYER.search(node.name)
        if found:
            labels.append(f"layer {found.group(1)}")
        elif "embed" in node.name.lower():
            labels.append("embeddings")
        else:
            labels.append(None)
    following = "head"  # what is left after the last layer: pooler, classifier
    for i in range(len(labels) - 1, -1, -1):
        if labels[i] is None:
            labels[i] = following if following.startswith("layer ") else "head"
        following = labels[i]
    groups: dict[str, list[str]] = {}
    for node, label in zip(weighted, labels, strict=True):
        groups.setdefault(label, []).append(node.name)
    return dict(sorted(groups.items(), key=lambda kv: _order(kv[0])))


def _order(group: str) -> tuple[int, int]:
    if group == "embeddings":
        return (0, 0)
    if group.startswith("layer "):
        return (1, int(group.split()[1]))
    return (2, 0)


def graph_quantized(src_folder: Path, method: str) -> Path:
    """The graph whose node names ``nodes_to_exclude`` refers to for ``method``."""
    unfused = Path(src_folder) / UNFUSED_FILE
    return unfused if method == "static" and unfused.exists() else Path(src_folder) / ONNX_FILE


def choose_fp32_groups(
    groups: dict[str, list[str]],
    quantize: Callable[[list[str], Path], Path],
    outputs: Callable[[Path], np.ndarray],
    metric: Callable[[np.ndarray], float],
    reference: np.ndarray,
    cfg: SensitivityConfig,
) -> tuple[list[str], dict]:
    """``quantize(excluded_nodes, folder)`` writes a candidate; ``outputs(folder)`` runs it on
    the held-out rows; ``metric(outputs)`` scores them; ``reference``: the FP32 outputs."""
    fp32_score = metric(reference)
    with tempfile.TemporaryDirectory(prefix="slimformer-sensitivity-") as tmp:

        def measure(excluded: list[str], name: str) -> tuple[float, float]:
            folder = quantize(excluded, Path(tmp) / name)
            values = outputs(folder)
            return metric(values), float(np.mean((values - reference) ** 2))

        all_int8, all_mse = measure([], "all")
        table = []
        for group, nodes in groups.items():
            score, mse = measure(nodes, re.sub(r"\W", "_", group))
            table.append({"group": group, "nodes": len(nodes), "metric": score, "mse": mse})
            log.info("sensitivity: %s in FP32 -> metric %.4f, mse %.3g", group, score, mse)
        ranked = sorted(table, key=lambda row: row["mse"])  # most recovered first
        chosen: list[str] = []
        current = all_int8
        limit = len(ranked) if cfg.max_fp32_groups is None else cfg.max_fp32_groups
        for row in ranked:
            if 100 * (fp32_score - current) <= cfg.max_drop or len(chosen) >= limit:
                break
            chosen.append(row["group"])
            excluded = [n for g in chosen for n in groups[g]]
            current, _ = measure(excluded, f"greedy{len(chosen)}")
    report = {
        "examples_metric_fp32": fp32_score,
        "examples_metric_all_int8": all_int8,
        "examples_metric_chosen": current,
        "all_int8_mse": all_mse,
        "max_drop": cfg.max_drop,
        "groups": table,
        "fp32_groups": chosen,
    }
    excluded = [n for g in chosen for n in groups[g]]
    log.info("sensitivity: keeping %s in FP32 (%d nodes)", chosen or "nothing", len(excluded))
    return excluded, report
