"""Per-layer sensitivity analysis: grouping, the greedy choice, and the quantize stage option."""

from pathlib import Path

import numpy as np

from slimformer.export.sensitivity import SensitivityConfig, choose_fp32_groups, node_groups
from slimformer.pipeline.recipe import parse_recipe
from tests.conftest import sst2_recipe


def test_nodes_are_grouped_by_layer(tiny_teacher, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from slimformer.export.onnx_export import export_onnx

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    export_onnx(model, tokenizer, tmp_path)
    groups = node_groups(tmp_path / "model.onnx")
    layers = [g for g in groups if g.startswith("layer ")]
    assert layers == [f"layer {i}" for i in range(model.config.num_hidden_layers)]
    assert "embeddings" in groups and "head" in groups
    assert all(len(groups[g]) >= 4 for g in layers)  # attention (fused or q, k, v), out, FFN


def _fake_model(costs: dict[str, float]):
    """Outputs drift from the reference by the summed cost of the quantized groups."""
    reference = np.zeros((10, 2))
    reference[:, 0] = 1.0  # class 0 everywhere

    def quantize(excluded: list[str], folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "excluded").write_text(",".join(excluded))
        return folder

    def outputs(folder: Path) -> np.ndarray:
        excluded = set(filter(None, (folder / "excluded").read_text().split(",")))
        drift = sum(c for g, c in costs.items() if g not in excluded)
        values = reference.copy()
        values[: int(round(drift)), 1] = 2.0  # that many examples flip to class 1
        return values

    def metric(values: np.ndarray) -> float:
        return float((values.argmax(1) == 0).mean())

    groups = {g: [g] for g in costs}
    return groups, quantize, outputs, metric, reference


def test_greedy_keeps_the_costliest_layers_until_within_the_budget():
    groups, quantize, outputs, metric, reference = _fake_model({"a": 1, "b": 4, "c": 2})
    cfg = SensitivityConfig(max_drop=10.0)  # 10 points = one example of ten
    excluded, report = choose_fp32_groups(groups, quantize, outputs, metric, reference, cfg)
    assert report["fp32_groups"] == ["b", "c"]  # b, then c: 7 -> 3 -> 1 flipped
    assert excluded == ["b", "c"]
    assert report["examples_metric_all_int8"] == 0.3
    assert report["examples_metric_chosen"] == 0.9


def test_greedy_respects_the_group_limit_and_an_easy_budget():
    groups, quantize, outputs, metric, reference = _fake_model({"a": 1, "b": 4, "c": 2})
    _, capped = choose_fp32_groups(
        groups, quantize, outputs, metric, reference, SensitivityConfig(max_fp32_groups=1)
    )
    assert capped["fp32_groups"] == ["b"]
    _, easy = choose_fp32_groups(
        groups, quantize, outputs, metric, reference, SensitivityConfig(max_drop=100)
    )
    assert easy["fp32_groups"] == []


def test_quantize_stage_with_sensitivity(tiny_teacher, sst2_slice, tmp_path):
    from slimformer.pipeline.runner import run_recipe

    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["student"] = {"model": str(tiny_teacher)}
    tree["stages"] = [
        {
            "quantize": {
                "method": "static",
                "calibration_examples": 16,
                "sensitivity": {"examples": 32, "max_drop": 0, "max_fp32_groups": 1},
            }
        }
    ]
    report = run_recipe(parse_recipe(tree), tmp_path / "run", cache_dir=str(tmp_path / "c"))
    stage = report["stages"][0]
    sens = stage["sensitivity"]
    assert len(sens["groups"]) >= 3 and len(sens["fp32_groups"]) <= 1
    assert sens["rows"] == "data.train[16:48]"
    excluded = stage["config"]["exclude_nodes"]
    assert len(excluded) == sum(
        g["nodes"] for g in sens["groups"] if g["group"] in sens["fp32_groups"]
    )
