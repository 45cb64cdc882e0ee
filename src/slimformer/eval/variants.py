"""A model variant to measure, whatever runs it: a PyTorch folder (save_pretrained, or an
exported graph), or an ONNX folder (model.onnx + config + tokenizer) run by ONNX Runtime. A
folder's ``slimformer_runtime.json`` (written by ``optimize``) says how it runs: precision,
compiled or not, threads. All give aligned outputs for the task metrics and a callable for
latency, so the report treats them alike."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from slimformer.eval.latency import count_params
from slimformer.eval.predict import predict
from slimformer.export.torch_runtime import RuntimeSpec, load_runtime_model, read_runtime_spec
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
    spec: RuntimeSpec | None = None


class _Threads:
    """Run with ``n`` intra-op threads and restore the previous count afterwards."""

    def __init__(self, n: int | None) -> None:
        self.n, self.before = n, None

    def __enter__(self) -> None:
        if self.n:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        if self.before:
            torch.set_num_threads(self.before)


def is_onnx_folder(folder: Path) -> bool:
    return (Path(folder) / ONNX_FILE).is_file()


def torch_variant(model, folder: Path, task: Task, spec: RuntimeSpec | None = None) -> Variant:
    model.eval()
    threads = spec.threads if spec else None

    def run(feed):
        with torch.inference_mode(), _Threads(threads):
            return model(**feed)

    def predict_fn(ds, collate):
        with _Threads(threads):
            return predict(model, task, ds, collate)

    return Variant(
        folder=Path(folder),
        runtime="pytorch",
        predict=predict_fn,
        run=run,
        params=count_params(model),
        size_mb=size_on_disk_mb(folder),
        vocab_size=model.config.vocab_size,
        spec=spec,
    )


def onnx_variant(
    folder: Path, spec: RuntimeSpec | None = None, task: Task | None = None
) -> Variant:
    """``task``: packs per-token outputs (token classification); None = one row per example."""
    import onnx
    from transformers import AutoConfig

    from slimformer.export.ort_runtime import feed_for, ort_predict, ort_session

    path = Path(folder) / ONNX_FILE
    session = ort_session(path, spec.threads if spec else None)
    graph = onnx.load(str(path)).graph
    params = int(sum(np.prod(t.dims) for t in graph.initializer))
    return Variant(
        folder=Path(folder),
        runtime="onnxruntime",
        predict=lambda ds, collate: ort_predict(
            session, ds, collate, pack=task.pack if task is not None else None
        ),
        run=lambda feed: session.run(None, feed_for(session, feed)),
        params=params,
        size_mb=path.stat().st_size / 2**20,
        vocab_size=AutoConfig.from_pretrained(folder).vocab_size,
        spec=spec,
    )


def load_variant(folder: Path, task: Task) -> Variant:
    spec = read_runtime_spec(folder)
    if is_onnx_folder(folder):
        return onnx_variant(folder, spec, task)
    if spec is None:
        return torch_variant(task.load_model(str(folder)), folder, task)
    return torch_variant(load_runtime_model(folder, spec, task.load_model), folder, task, spec)
