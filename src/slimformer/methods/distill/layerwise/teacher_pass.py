"""The teacher's pass over the training rows, before training, when its states are cached.

Filled lazily, the state cache runs the teacher on each training batch of the first epoch:
32 shuffled rows at a time. Filled up front, the same rows go through the teacher longest
first in batches of ~2,048 tokens, whose matmuls are larger and whose padding is nearly nil.
On this project's 2-core AMD EPYC the teacher's bf16 forward over 8,000 SST-2 sentences took
9.5-10.0 s this way against 11.5-12.6 s in the training batches; whole runs gained 0-10%
(docs/benchmarks.md). The rows and the logits (the logit cache is fed by the same pass) are
the same either way, up to the last bits of the bf16 sums.
"""

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from slimformer.data.batching import token_budget_batches
from slimformer.methods.distill.layerwise.distiller import LayerwiseDistiller

log = logging.getLogger("slimformer")

TEACHER_PASS_TOKENS = 2048
TEACHER_PASS_MAX_ROWS = 128


def fill_state_cache(
    distiller: LayerwiseDistiller,
    ds,
    collate,
    device: torch.device,
    tokens: int = TEACHER_PASS_TOKENS,
    max_rows: int = TEACHER_PASS_MAX_ROWS,
) -> int:
    """Run the teacher on ``device`` over the rows of ``ds`` (with an ``idx`` column) that the
    state cache lacks; returns how many it ran on. For one process: under several
    (``accelerate launch``) the training batches fill the cache, each process its own."""
    cache = distiller.state_cache
    if cache is None:
        return 0
    idx = np.asarray(ds["idx"])
    _, first = np.unique(idx, return_index=True)  # a row listed twice runs once
    todo = np.sort(first[cache.missing(idx[first])])
    if len(todo) == 0:
        return 0
    rows = ds.select(todo.tolist())
    lengths = [len(x) for x in rows["input_ids"]]
    batches = token_budget_batches(lengths, tokens, max_rows)
    log.info("teacher pass: %d rows into the state cache %s", len(todo), cache.dir)
    with tqdm(total=len(todo), desc="teacher pass", unit="row", dynamic_ncols=True) as bar:
        for positions in batches:
            batch = collate([rows[p] for p in positions])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            distiller.fill_cache(batch)
            bar.update(len(positions))
    return len(todo)
