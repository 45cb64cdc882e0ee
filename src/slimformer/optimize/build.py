"""Write one candidate's deployable folder: weights or graph, config, tokenizer, and the
``slimformer_runtime.json`` that tells ``load_variant`` (and the server) how to run it."""

import copy
import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slimformer.export.onnx_export import export_onnx
from slimformer.export.ort_quantize import QuantizeConfig, quantize_onnx
from slimformer.export.torch_runtime import (
    RuntimeSpec,
    quantize_pt2e,
    save_program,
    write_runtime_spec,
)
from slimformer.optimize.candidates import Candidate
from slimformer.tasks.base import MODEL_INPUTS


def runtime_spec(candidate: Candidate, threads: int | None) -> RuntimeSpec:
    return RuntimeSpec(
        runtime=candidate.runtime,
        precision=candidate.precision,
        quantization=candidate.quantization,
        compiled=candidate.compiled,
        threads=threads,
    )


def calibration_batches(
    ds: datasets.Dataset, collate: Callable, examples: int, batch_size: int = 16
) -> Iterator[dict[str, torch.Tensor]]:
    """Model inputs of the first ``examples`` rows, one small batch at a time."""
    subset = ds.select(range(min(examples, len(ds))))
    for batch in DataLoader(subset, batch_size=batch_size, collate_fn=collate):
        yield {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def build_candidate(
    candidate: Candidate,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    calibration: datasets.Dataset,
    collate: Callable,
    calibration_examples: int,
    onnx_fp32: Callable[[], Path],
    threads: int | None = None,
) -> None:
    """Write ``candidate`` built from the fp32 ``model`` into ``out``. ``onnx_fp32()`` returns
    the shared fp32 ONNX export (made once for all ONNX Runtime candidates)."""
    out.mkdir(parents=True, exist_ok=True)
    if candidate.runtime == "onnxruntime":
        _build_onnx(candidate, out, calibration, collate, calibration_examples, onnx_fp32())
    elif candidate.quantization.startswith("pt2e"):
        batches = calibration_batches(calibration, collate, calibration_examples)
        first = next(batches)
        program = quantize_pt2e(
            model,
            first,
            itertools.chain([first], batches),
            candidate.quantization == "pt2e-dynamic",
        )
        save_program(program, out)
        model.config.save_pretrained(out)
        tokenizer.save_pretrained(out)
    else:
        # A copy: casting the shared fp32 model to bf16 and back would round its weights.
        weights = (
            copy.deepcopy(model).to(torch.bfloat16) if candidate.precision == "bf16" else model
        )
        weights.save_pretrained(out)
        tokenizer.save_pretrained(out)
    write_runtime_spec(out, runtime_spec(candidate, threads))


def _build_onnx(
    candidate: Candidate,
    out: Path,
    calibration: datasets.Dataset,
    collate: Callable,
    calibration_examples: int,
    fp32_folder: Path,
) -> None:
    if candidate.quantization == "none":
        shutil.copytree(fp32_folder, out, dirs_exist_ok=True)
        return
    method = "static" if candidate.quantization == "ort-static" else "dynamic"
    cfg = QuantizeConfig(method=method, calibration_examples=calibration_examples)
    quantize_onnx(fp32_folder, out, cfg, calibration, collate)


def export_fp32_onnx(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    export_onnx(model, tokenizer, out)
    return out
