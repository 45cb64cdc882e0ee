"""Each deployment candidate built from a tiny model answers like fp32, and the optimize
command runs end to end (here with the CPU's matrix units forced off: the fallback path)."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from slimformer.eval.variants import load_variant, torch_variant
from slimformer.export.torch_runtime import read_runtime_spec
from slimformer.optimize.build import build_candidate, export_fp32_onnx
from slimformer.optimize.candidates import BY_NAME
from slimformer.pipeline.context import build_context
from slimformer.pipeline.recipe import parse_recipe


@pytest.fixture(scope="module")
def ctx(tiny_teacher, sst2_slice):
    tree = {
        "student": {"model": str(tiny_teacher)},
        "data": {
            "train": str(sst2_slice["train"]),
            "eval": str(sst2_slice["dev"]),
            "text_column": "sentence",
            "max_length": 32,
        },
        "stages": [{"optimize": {"candidates": ["pytorch-fp32"]}}],
    }
    return build_context(parse_recipe(tree, "<test>"))


@pytest.fixture(scope="module")
def fp32(ctx, tiny_teacher):
    model = ctx.task.load_model(str(tiny_teacher))
    return model, torch_variant(model, tiny_teacher, ctx.task).predict(ctx.eval_ds, ctx.collate)


@pytest.mark.parametrize(
    "name, atol",
    [
        ("pytorch-bf16", 0.05),
        ("pytorch-int8-dynamic", 0.05),
        ("pytorch-int8-static-compiled", 0.05),
        ("onnxruntime-fp32", 1e-4),
        ("onnxruntime-int8-dynamic", 0.05),
    ],
)
def test_candidate_outputs_close_to_fp32(name, atol, ctx, fp32, tmp_path):
    model, reference = fp32
    tokenizer = AutoTokenizer.from_pretrained(ctx.recipe.student.model)
    out = tmp_path / name
    build_candidate(
        BY_NAME[name],
        model,
        tokenizer,
        out,
        ctx.train_ds,
        ctx.collate,
        32,
        lambda: export_fp32_onnx(model, tokenizer, tmp_path / "onnx"),
        threads=1,
    )
    spec = read_runtime_spec(out)
    assert spec.precision == BY_NAME[name].precision and spec.threads == 1
    values = load_variant(out, ctx.task).predict(ctx.eval_ds, ctx.collate)  # a fresh load
    assert np.abs(values - reference).max() < atol
    assert (values.argmax(-1) == reference.argmax(-1)).mean() >= 0.95


def test_optimize_command_falls_back_without_matrix_units(
    tiny_teacher, sst2_slice, tmp_path, monkeypatch, capsys
):
    from slimformer.cli import main

    monkeypatch.setenv("SLIMFORMER_CPU_FEATURES_OFF", "all")
    args = [
        "optimize",
        str(tiny_teacher),
        "--data",
        str(sst2_slice["dev"]),
        "--text-column",
        "sentence",
        "--candidates",
        "pytorch-bf16,pytorch-int8-dynamic,onnxruntime-int8-dynamic",
        "--batch-sizes",
        "1,4",
        "--set",
        "report.repeats=2",
        "--set",
        "stages.0.optimize.repeats=2",
        "--output",
        str(tmp_path / "opt"),
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "opt" / "report.json").read_text())
    info = report["stages"][0]
    assert "pytorch-bf16" in info["skipped"]
    measured = {row["name"] for row in info["table"]}
    assert measured == {"pytorch-fp32", "pytorch-int8-dynamic", "onnxruntime-int8-dynamic"}
    assert info["choice"]["name"] in measured
    assert set(info["matmul_peak_gflops"]) == {"fp32", "bf16", "int8"}
    assert report["machine"]["cpu_features"]["bf16_unit"] is None
    assert report["teacher"]["runtime"] == "pytorch"  # the same model in fp32, the baseline
    assert set(report["speedup"]) == {"bs1", "bs4"}
    chosen = load_variant(
        tmp_path / "opt" / "model",
        build_context(parse_recipe(json.loads(json.dumps(_recipe(tmp_path))), "<r>")).task,
    )
    assert chosen.spec is not None


def _recipe(tmp_path):
    import yaml

    return yaml.safe_load((tmp_path / "opt" / "recipe.yaml").read_text())
