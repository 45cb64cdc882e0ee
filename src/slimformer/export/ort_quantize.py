"""INT8 quantization of an exported ONNX model with ONNX Runtime.

- dynamic: weights INT8 ahead of time, activations quantized per batch at run time; no data.
- static: activation ranges from calibration data (MinMax, Entropy or Percentile), QDQ format.
  Calibration streams one batch at a time (ORT's strided collection: each stride's outputs are
  folded into the running ranges/histograms and freed), so memory does not grow with the number
  of calibration examples.
"""

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from pydantic import Field
from torch.utils.data import DataLoader

from slimformer.config import StrictConfig
from slimformer.errors import ExportError
from slimformer.export.onnx_export import (
    ONNX_FILE,
    UNFUSED_FILE,
    copy_side_files,
    onnx_folder_check,
)
from slimformer.export.sensitivity import SensitivityConfig

_CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}

# Static QDQ settings. U8 activations / S8 weights: ORT's recommended setting for x86 CPUs.
# MatMuls carry the compute, Gather the embedding table (most of the size). Other ops stay fp32:
# the additive attention mask holds -inf/min-float values that no histogram calibration can range.
_STATIC = dict(
    quant_format=QuantFormat.QDQ,
    activation_type=QuantType.QUInt8,
    weight_type=QuantType.QInt8,
    op_types_to_quantize=["MatMul", "Gather"],
)


class QuantizeConfig(StrictConfig):
    method: Literal["dynamic", "static"] = "dynamic"
    per_channel: bool = False
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_examples: int = Field(500, gt=0)
    calibration_batch_size: int = Field(16, gt=0)
    exclude_nodes: list[str] = Field([], description="ONNX node names kept in FP32")
    sensitivity: SensitivityConfig | None = Field(
        None, description="measure each layer's cost in accuracy; keep the costliest in FP32"
    )


class StreamingReader(CalibrationDataReader):
    """Feeds calibration batches lazily; ``set_range`` lets ORT process one stride at a time."""

    def __init__(
        self, ds: datasets.Dataset, collate: Callable, batch_size: int, input_names: list[str]
    ) -> None:
        self.ds, self.collate, self.batch_size = ds, collate, batch_size
        self.input_names = input_names
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return (len(self.ds) + self.batch_size - 1) // self.batch_size

    def set_range(self, start_index: int, end_index: int) -> None:
        rows = range(start_index * self.batch_size, min(end_index * self.batch_size, len(self.ds)))
        self._iter = iter(
            DataLoader(self.ds.select(rows), batch_size=self.batch_size, collate_fn=self.collate)
        )

    def get_next(self) -> dict | None:
        batch = next(self._iter, None)
        if batch is None:
            return None
        feed = {}
        for name in self.input_names:
            value = batch.get(name)
            if value is None:  # e.g. token_type_ids for a tokenizer that does not emit them
                value = batch["input_ids"] * 0
            feed[name] = value.numpy().astype("int64")
        return feed


def quantize_onnx(
    src: Path,
    dst_dir: Path,
    cfg: QuantizeConfig,
    calibration: datasets.Dataset | None = None,
    collate: Callable | None = None,
    calibration_cache: Path | None = None,
) -> Path:
    """Quantize ``src`` (an exported folder or .onnx file) into ``dst_dir/model.onnx``.
    ``calibration_cache``: a JSON file of static ranges, written by the first call and read by
    the next ones (the sensitivity search quantizes one model many times, calibrating once)."""
    from slimformer.utils.atomic import scratch_cwd

    src_path = onnx_folder_check(src).resolve()
    dst_dir = Path(dst_dir).resolve()
    with scratch_cwd():  # ORT's tools leave temporary files in the working directory
        return _quantize_into(src_path, dst_dir, cfg, calibration, collate, calibration_cache)


def _quantize_into(
    src_path: Path, dst_dir: Path, cfg, calibration, collate, calibration_cache=None
) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / ONNX_FILE
    common = dict(per_channel=cfg.per_channel, nodes_to_exclude=cfg.exclude_nodes or None)
    if cfg.method == "dynamic":
        # Fused contrib ops (BiasGelu, SkipLayerNorm) hide some tensor types from ONNX shape
        # inference; they are all float32 in an exported fp32 model.
        quantize_dynamic(
            str(src_path),
            str(dst),
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            **common,
        )
    else:
        if calibration is None or len(calibration) == 0:
            raise ExportError(
                "Static quantization needs calibration data, and the calibration "
                "set is empty. Give data.train (or data.eval) with examples, or "
                "use method: dynamic."
            )
        ds = calibration.select(range(min(cfg.calibration_examples, len(calibration))))
        _quantize_static(src_path, dst, cfg, ds, collate, common, calibration_cache)
    if src_path.parent != dst_dir:
        copy_side_files(src_path.parent, dst_dir)
    return dst


@contextmanager
def prepared_for_static(src: Path) -> Iterator[Path]:
    """The graph static quantization starts from: the unfused export (the fused contrib ops,
    Attention and SkipLayerNormalization, defeat the quantizer's type inference; ORT fuses the
    QDQ graph again when it loads it), shape-inferred by ORT's pre-processing, in a temp dir."""
    unfused = src.parent / UNFUSED_FILE
    with tempfile.TemporaryDirectory(prefix="slimformer-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference is enough for the standard ops of the unfused graph
        quant_pre_process(
            str(unfused if unfused.exists() else src), str(prepared), skip_symbolic_shape=True
        )
        yield prepared


def _quantize_static(
    src: Path,
    dst: Path,
    cfg: QuantizeConfig,
    ds: datasets.Dataset,
    collate: Callable,
    common: dict,
    calibration_cache: Path | None = None,
) -> None:
    with prepared_for_static(src) as prepared:
        names = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]
        reader = StreamingReader(ds, collate, cfg.calibration_batch_size, names)
        quantize_static(
            str(prepared),
            str(dst),
            reader,
            calibrate_method=_CALIBRATION[cfg.calibration],
            **_STATIC,
            extra_options={"CalibStridedMinMax": 1},
            calibration_cache_path=None if calibration_cache is None else str(calibration_cache),
            **common,
        )


def quantize_with_ranges(
    prepared: Path,
    dst: Path,
    nodes: list[str],
    ranges: dict[str, tuple[float, float]],
    per_channel: bool = False,
) -> Path:
    """Static QDQ INT8 of exactly ``nodes`` (MatMul / Gather names of ``prepared``) with the
    given activation ranges (tensor name -> (min, max)) instead of a calibration pass: the
    ranges QAT trained with. Only node inputs are quantized, as in the fake-quantized model."""
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    data = {
        name: (np.array(low, dtype=np.float32), np.array(high, dtype=np.float32))
        for name, (low, high) in ranges.items()
    }
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimformer-ranges-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        quantize_static(
            str(prepared),
            str(dst),
            None,
            calibrate_method=CalibrationMethod.MinMax,
            **_STATIC,
            nodes_to_quantize=nodes,
            per_channel=per_channel,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gather"]},
            calibration_cache_path=str(cache),
        )
    _float_inputs_for_other_consumers(dst, set(nodes))
    return dst


def _float_inputs_for_other_consumers(path: Path, quantized: set[str]) -> None:
    """ORT's QDQ pass hands the dequantized tensor to every consumer of a quantized activation,
    e.g. the residual Add that also reads a LayerNorm output. Fake quantization only touches
    the Linear's input, so the other consumers get the float tensor back."""
    model = onnx.load(str(path))
    produced_by_q = {
        n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"
    }
    inits = {t.name for t in model.graph.initializer}
    float_of = {
        n.output[0]: produced_by_q[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in produced_by_q
        and produced_by_q[n.input[0]] not in inits
    }
    for node in model.graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in float_of:
                node.input[i] = float_of[name]
    onnx.save(model, str(path))
