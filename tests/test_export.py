"""ONNX export, parity checking and INT8 quantization on a tiny model."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from transformers import AutoModelForSequenceClassification

from slimformer.errors import ExportError
from slimformer.eval.variants import onnx_variant
from slimformer.export.onnx_export import export_onnx
from slimformer.export.ort_quantize import QuantizeConfig, quantize_onnx
from slimformer.export.ort_runtime import ort_predict, ort_session
from slimformer.export.parity import check_parity
from slimformer.export.torch_quantize import quantize_torch_dynamic
from slimformer.pipeline.context import build_context
from slimformer.pipeline.recipe import parse_recipe
from tests.conftest import sst2_recipe


@pytest.fixture(scope="module")
def exported(tiny_teacher, tokenizer, tmp_path_factory):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(model, tokenizer, out)
    return model, out


@pytest.fixture(scope="module")
def eval_data(tiny_teacher, sst2_slice):
    ctx = build_context(parse_recipe(sst2_recipe(tiny_teacher, sst2_slice)))
    return ctx.eval_ds, ctx.collate


def torch_logits(model, ds, collate):
    from slimformer.eval.predict import predict
    from slimformer.tasks import get_task

    return predict(model, get_task("sequence-classification"), ds, collate)


def test_export_matches_pytorch_at_new_shapes(exported, eval_data):
    model, folder = exported
    ds, collate = eval_data
    ref = torch_logits(model, ds, collate)
    got = onnx_variant(folder).predict(ds, collate)  # batch and lengths differ from the trace
    assert check_parity(ref, got)["max_abs_diff"] < 1e-4
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()


def test_parity_checker_catches_a_broken_graph(exported, eval_data, tmp_path):
    model, folder = exported
    ds, collate = eval_data
    graph = onnx.load(str(folder / "model.onnx"))
    biggest = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))  # word embeddings
    broken = numpy_helper.to_array(biggest) * -1.0
    biggest.CopyFrom(numpy_helper.from_array(broken, biggest.name))
    onnx.save(graph, str(tmp_path / "model.onnx"))
    bad = ort_predict(ort_session(tmp_path / "model.onnx"), ds, collate)
    with pytest.raises(ExportError, match="does not match PyTorch"):
        check_parity(torch_logits(model, ds, collate), bad)


@pytest.mark.parametrize(
    "cfg",
    [
        QuantizeConfig(method="dynamic"),
        QuantizeConfig(method="dynamic", per_channel=True),
        QuantizeConfig(method="static", calibration="minmax", calibration_examples=32),
        QuantizeConfig(method="static", calibration="percentile", calibration_examples=32),
        QuantizeConfig(method="static", calibration="entropy", calibration_examples=32),
    ],
    ids=["dynamic", "dynamic-per-channel", "static-minmax", "static-percentile", "static-entropy"],
)
def test_quantized_model_loads_in_a_fresh_session(exported, eval_data, tmp_path, cfg):
    _, folder = exported
    ds, collate = eval_data
    out = quantize_onnx(folder, tmp_path / "q", cfg, ds, collate)
    quantized = onnx.load(str(out))
    assert any("Integer" in n.op_type or "Quant" in n.op_type for n in quantized.graph.node)
    logits = ort_predict(ort_session(out), ds, collate)  # a new session, from the file
    assert logits.shape == (len(ds), 2) and np.isfinite(logits).all()


def test_static_quantization_needs_calibration_data(exported, eval_data, tmp_path):
    _, folder = exported
    ds, collate = eval_data
    with pytest.raises(ExportError, match="calibration set is empty"):
        quantize_onnx(
            folder, tmp_path / "q", QuantizeConfig(method="static"), ds.select([]), collate
        )


def test_unsupported_opset_and_missing_onnx(exported, tokenizer, tmp_path):
    model, _ = exported
    with pytest.raises(ExportError, match="opset 9 is not supported"):
        export_onnx(model, tokenizer, tmp_path / "x", opset=9)
    with pytest.raises(ExportError, match="No ONNX model"):
        quantize_onnx(tmp_path / "empty", tmp_path / "q", QuantizeConfig())


def test_torch_dynamic_int8_is_close_to_fp32(exported, eval_data):
    model, _ = exported
    ds, collate = eval_data
    qmodel = quantize_torch_dynamic(model)
    ref = torch_logits(model, ds, collate)
    got = torch_logits(qmodel, ds, collate)
    assert np.abs(ref - got).max() < 0.1


def test_calibration_streams_one_batch_at_a_time(exported, eval_data, tmp_path, monkeypatch):
    """ORT folds each stride into its ranges and frees it: memory stays bounded."""
    from slimformer.export import ort_quantize

    _, folder = exported
    ds, collate = eval_data
    ranges = []
    real = ort_quantize.StreamingReader.set_range

    def spy(self, start_index, end_index):
        ranges.append(end_index - start_index)
        return real(self, start_index, end_index)

    monkeypatch.setattr(ort_quantize.StreamingReader, "set_range", spy)
    cfg = QuantizeConfig(method="static", calibration_examples=64, calibration_batch_size=8)
    quantize_onnx(folder, tmp_path / "q", cfg, ds, collate)
    assert ranges[1:] == [1] * 8  # after the reader's own initial full range: 8 strides of 1


def test_quantize_stage_after_distill_in_a_recipe(tiny_teacher, sst2_slice, tmp_path):
    from slimformer.pipeline.runner import run_recipe

    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["stages"].append({"quantize": {"method": "dynamic"}})
    report = run_recipe(parse_recipe(tree), tmp_path / "run", cache_dir=str(tmp_path / "c"))
    assert report["student"]["runtime"] == "onnxruntime"
    assert (tmp_path / "run" / "model" / "model.onnx").exists()
    stage = report["stages"][1]
    assert stage["export"]["parity"]["agreement"] == 1.0
    assert stage["size_mb"]["int8"] < 0.5 * stage["size_mb"]["fp32"]
    assert set(report["speedup"]) == {"bs1", "bs4"}
