"""A model variant to measure, whatever runs it: a PyTorch folder (save_pretrained) or an ONNX
folder (model.onnx + config + tokenizer) run by ONNX Runtime. Both give aligned outputs for the
task metrics and a callable for latency, so the report treats them alike."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from slimformer.eval.latency import count_params
from slimformer.eval.predict import predict
from slimformer.models.loading import size_on_disk_mb
from slimformer.tasks.base import Task

ONNX_FILE = "model.onnx"


@dataclass
class Variant:
    folder: Path
    runtime: str  # "pytorch" | "onnxruntime"
    predict: Callable[[datasets.Dataset, Callable], np.ndarray]
    run: Callable[[dict[str, torch.Tensor]], object]  # one forward pass, for latency
    params: int
    size_mb: float
    vocab_size: int


def is_onnx_folder(folder: Path) -> bool:
    return (Path(folder) / ONNX_FILE).is_file()


def torch_variant(model, folder: Path, task: Task) -> Variant:
    model.eval()

    def run(feed):
        with torch.inference_mode():
            return model(**feed)

    return Variant(
        folder=Path(folder),
        runtime="pytorch",
        predict=lambda ds, collate: predict(model, task, ds, collate),
        run=run,
        params=count_params(model),
        size_mb=size_on_disk_mb(folder),
        vocab_size=model.config.vocab_size,
    )


def onnx_variant(folder: Path) -> Variant:
    import onnx
    from transformers import AutoConfig

    from slimformer.export.ort_runtime import feed_for, ort_predict, ort_session

    path = Path(folder) / ONNX_FILE
    session = ort_session(path)
    graph = onnx.load(str(path)).graph
    params = int(sum(np.prod(t.dims) for t in graph.initializer))
    return Variant(
        folder=Path(folder),
        runtime="onnxruntime",
        predict=lambda ds, collate: ort_predict(session, ds, collate),
        run=lambda feed: session.run(None, feed_for(session, feed)),
        params=params,
        size_mb=path.stat().st_size / 2**20,
        vocab_size=AutoConfig.from_pretrained(folder).vocab_size,
    )


def load_variant(folder: Path, task: Task) -> Variant:
    if is_onnx_folder(folder):
        return onnx_variant(folder)
    return torch_variant(task.load_model(str(folder)), folder, task)
