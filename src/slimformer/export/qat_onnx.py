"""INT8 ONNX from fixed activation ranges: the export step of quantization-aware training, and
its post-training baseline (the same ranges, the weights before QAT). The ONNX model quantizes
exactly the Linears and embedding tables that the fake-quantized PyTorch model rounds, with the
same ranges, so its accuracy is the one QAT measured."""

from pathlib import Path

from torch import nn

from slimformer.errors import ExportError
from slimformer.export.onnx_export import ONNX_FILE, copy_side_files
from slimformer.export.onnx_sites import QuantSites, find_sites
from slimformer.export.ort_quantize import prepared_for_static, quantize_with_ranges
from slimformer.methods.quantize.fake_quant import ActivationRanges
from slimformer.utils.atomic import atomic_dir, scratch_cwd


def quantizable_sites(fp32_folder: Path, model: nn.Module) -> QuantSites:
    """The Linears / embeddings of ``model`` that static INT8 of its export quantizes."""
    onnx_file = Path(fp32_folder).resolve() / ONNX_FILE  # before scratch_cwd changes the cwd
    with scratch_cwd(), prepared_for_static(onnx_file) as prepared:
        sites = find_sites(prepared, model)
    if not sites.linears:
        raise ExportError(
            f"No Linear layer of the model was found as a MatMul in {fp32_folder}: nothing "
            f"to quantize-aware train. Check that the folder is the export of this model."
        )
    return sites


def int8_with_ranges(
    fp32_folder: Path,
    model: nn.Module,
    out: Path,
    ranges: ActivationRanges,
    per_channel: bool = False,
) -> QuantSites:
    """``out``/model.onnx: static QDQ INT8 of ``fp32_folder`` (the export of ``model``) with
    ``ranges`` (by Linear module name) as the activation ranges."""
    fp32_folder, out = Path(fp32_folder).resolve(), Path(out).resolve()
    with scratch_cwd(), prepared_for_static(fp32_folder / ONNX_FILE) as prepared:
        sites = find_sites(prepared, model)
        missing = [name for name in ranges.ranges if name not in sites.linears]
        if missing:
            raise ExportError(
                f"These layers have QAT ranges but no MatMul in the export: "
                f"{', '.join(missing[:5])}. The export and the trained model differ."
            )
        by_tensor: dict[str, tuple[float, float]] = {}
        for name, (low, high) in ranges.ranges.items():
            tensor = sites.linears[name][1]  # q, k and v read the same tensor: one range
            old_low, old_high = by_tensor.get(tensor, (low, high))
            by_tensor[tensor] = (min(low, old_low), max(high, old_high))
        nodes = [sites.linears[name][0] for name in ranges.ranges] + list(sites.embeddings.values())
        with atomic_dir(out) as tmp:
            quantize_with_ranges(prepared, tmp / ONNX_FILE, nodes, by_tensor, per_channel)
            copy_side_files(fp32_folder, tmp)
    return sites
