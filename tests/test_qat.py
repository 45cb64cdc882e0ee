"""Quantization-aware training: ORT-exact fake quantization, the module <-> ONNX node mapping,
and the qat stage end to end on a tiny model."""

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from slimformer.eval.predict import predict
from slimformer.eval.variants import onnx_variant
from slimformer.export.onnx_export import export_onnx
from slimformer.export.qat_onnx import int8_with_ranges, quantizable_sites
from slimformer.methods.quantize.fake_quant import (
    ActivationRanges,
    activation_qparams,
    calibrate_ranges,
    fake_quant_activation,
    fake_quant_weight,
    fake_quantized,
)
from slimformer.pipeline.context import build_context
from slimformer.pipeline.recipe import parse_recipe
from tests.conftest import sst2_recipe


def test_activation_qparams_match_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    for low, high in [(-1.3, 4.2), (0.2, 3.0), (-5.0, -0.5), (0.0, 0.0)]:
        scale, zp = activation_qparams(torch.tensor(low), torch.tensor(high))
        ort_zp, ort_scale = compute_scale_zp(
            np.array(low, np.float32), np.array(high, np.float32), np.uint8(0), np.uint8(255)
        )
        assert float(scale) == pytest.approx(float(ort_scale), rel=1e-6)
        assert int(zp) == int(ort_zp)


def test_fake_quant_rounds_like_quantize_dequantize_and_passes_gradients():
    x = torch.linspace(-2, 6, 101, requires_grad=True)
    y = fake_quant_activation(x, torch.tensor(-1.0), torch.tensor(4.0))
    scale, zp = activation_qparams(torch.tensor(-1.0), torch.tensor(4.0))
    q = torch.clamp(torch.round(x.detach() / scale) + zp, 0, 255)
    assert torch.allclose(y, (q - zp) * scale)
    y.sum().backward()
    inside = (x.detach() >= -1.0 - scale / 2) & (x.detach() <= 4.0 + scale / 2)
    assert torch.equal(x.grad[inside], torch.ones(int(inside.sum())))  # straight through
    assert x.grad[x.detach() > 4.1].abs().sum() == 0  # saturated: no gradient


def test_weight_fake_quant_has_at_most_255_levels_per_row():
    w = torch.randn(8, 32)
    for per_channel in (False, True):
        fq = fake_quant_weight(w, per_channel)
        assert all(len(torch.unique(row)) <= 255 for row in fq)
        assert (fq - w).abs().max() < w.abs().max() / 127


def test_fake_quantized_restores_the_plain_forward_and_state_dict():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    keys = set(model.state_dict())
    ranges = ActivationRanges({"1": (-1.0, 1.0)})
    ids = torch.tensor([[1, 2, 3]])
    plain = model(ids)
    with fake_quantized(model, ["1"], ["0"], ranges):
        assert set(model.state_dict()) == keys
        assert not torch.equal(model(ids), plain)
    assert torch.equal(model(ids), plain)


@pytest.fixture(scope="module")
def tiny_setup(tiny_teacher, tokenizer, sst2_slice, tmp_path_factory):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    folder = tmp_path_factory.mktemp("fp32")
    export_onnx(model, tokenizer, folder)
    ctx = build_context(parse_recipe(sst2_recipe(tiny_teacher, sst2_slice)))
    return model, folder, ctx


def test_every_quantized_linear_is_found_in_the_export(tiny_setup):
    model, folder, _ = tiny_setup
    sites = quantizable_sites(folder, model)
    encoder_linears = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layer." in n
    ]
    assert sorted(sites.linears) == sorted(encoder_linears)  # pooler/classifier: Gemm, fp32
    assert "bert.embeddings.word_embeddings" in sites.embeddings


def test_int8_onnx_follows_the_fake_quantized_model(tiny_setup, tmp_path):
    model, folder, ctx = tiny_setup
    sites = quantizable_sites(folder, model)
    from torch.utils.data import DataLoader

    batches = DataLoader(ctx.train_ds, batch_size=16, collate_fn=ctx.collate)
    ranges = calibrate_ranges(model, list(sites.linears), batches, ctx.task.forward)
    int8_with_ranges(folder, model, tmp_path / "int8", ranges)
    got = onnx_variant(tmp_path / "int8").predict(ctx.eval_ds, ctx.collate)
    fp32 = predict(model, ctx.task, ctx.eval_ds, ctx.collate)
    with fake_quantized(model, list(sites.linears), list(sites.embeddings), ranges):
        simulated = predict(model, ctx.task, ctx.eval_ds, ctx.collate)
    # the simulation predicts the INT8 graph far better than the fp32 model does
    assert np.abs(simulated - got).max() < 0.25 * np.abs(fp32 - got).max()


def test_qat_stage_in_a_recipe(tiny_teacher, sst2_slice, tmp_path):
    from slimformer.pipeline.runner import run_recipe

    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["student"] = {"model": str(tiny_teacher)}
    tree["stages"] = [
        {"qat": {"max_steps": 3, "batch_size": 8, "calibration_examples": 32, "save_every": 2}}
    ]
    report = run_recipe(parse_recipe(tree), tmp_path / "run", cache_dir=str(tmp_path / "c"))
    stage = report["stages"][0]
    assert report["student"]["runtime"] == "onnxruntime"
    assert (tmp_path / "run" / "model" / "model.onnx").exists()
    assert set(stage["drop_points"]) == {"ptq", "qat"}
    assert stage["steps"] == 3
    assert stage["simulated_vs_onnx"]["agreement"] >= 0.95
    assert stage["size_mb"]["int8"] < 0.5 * stage["size_mb"]["fp32"]
    assert stage["quantized"]["linears"] > 0
    from slimformer.export.torch_runtime import read_runtime_spec

    spec = read_runtime_spec(tmp_path / "run" / "model")
    assert spec.precision == "int8" and spec.quantization == "ort-static-qat"


def test_cli_quantize_with_qat(tiny_teacher, sst2_slice, tmp_path):
    import json

    from slimformer.cli import main

    args = ["quantize", str(tiny_teacher), "--data", str(sst2_slice["dev"])]
    args += ["--calibration-data", str(sst2_slice["train"]), "--text-column", "sentence"]
    args += ["--method", "qat", "--qat-steps", "2", "--calibration-examples", "16"]
    assert main([*args, "--output", str(tmp_path / "q")]) == 0
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["stages"][0]["kind"] == "qat" and report["stages"][0]["steps"] == 2
    assert report["student"]["runtime"] == "onnxruntime"


def test_qat_refuses_sensitivity_and_an_export_of_another_model(tiny_setup, tmp_path):
    from slimformer import api
    from slimformer.errors import ExportError, RecipeError
    from tests.conftest import tiny_config

    with pytest.raises(RecipeError, match="keep_fp32_within applies to dynamic/static"):
        api.quantize("m", "d.tsv", tmp_path / "q", method="qat", keep_fp32_within=0.3)
    _, folder, _ = tiny_setup
    stranger = AutoModelForSequenceClassification.from_config(tiny_config(num_labels=2))
    with pytest.raises(ExportError, match="No Linear layer of the model was found"):
        quantizable_sites(folder, stranger)
