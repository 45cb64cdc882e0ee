"""Run an ONNX model with ONNX Runtime on prepared datasets and fixed-shape latency feeds."""

from pathlib import Path

import datasets
import numpy as np
import onnxruntime as ort
import torch
from torch.utils.data import DataLoader

from slimformer.data.batching import LengthGroupedBatchSampler


def ort_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No spin-waiting after a run: spinning threads would steal the cores from whatever runs
    # next (a PyTorch model measured in the same process, the server's other work).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feed_for(session: ort.InferenceSession, batch: dict) -> dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    feed = {}
    for name in names:
        value = batch.get(name)
        if value is None and name == "token_type_ids":
            value = torch.zeros_like(batch["input_ids"])
        feed[name] = value.cpu().numpy().astype(np.int64)
    return feed


def ort_predict(
    session: ort.InferenceSession,
    ds: datasets.Dataset,
    collate,
    batch_size: int = 64,
    pack=None,
) -> np.ndarray:
    """Packed logits (N, W) in dataset order, like ``eval.predict.predict`` for PyTorch;
    ``pack`` is the task's (per-token logits -> one row per example), None for (N, C)."""
    sampler = LengthGroupedBatchSampler(
        [len(x) for x in ds["input_ids"]], batch_size, seed=0, shuffle=False
    )
    out = None
    for batch in DataLoader(ds, batch_sampler=sampler, collate_fn=collate):
        logits = session.run(["logits"], feed_for(session, batch))[0]
        if pack is not None:
            flat = torch.from_numpy(logits.reshape(-1, logits.shape[-1]))
            logits = pack(flat, batch).numpy()
        if out is None:
            out = np.zeros((len(ds), logits.shape[-1]), dtype=np.float32)
        out[batch["idx"].numpy()] = logits
    return out
