"""log softmax(x / T) at a few indices per row, without materialising the (N, V) log-probs.

An LLM's next-token logits are large (2,040 positions x 49,152 tokens = 100 M values per
batch): a full fp32 ``log_softmax`` writes 400 MB, its backward reads and writes it again, and
cross-entropy and the top-k KD term each did that. Both only need the log-normaliser and the
logits at a few indices (the gold token; the teacher's top k), so this computes the normaliser
row chunk by row chunk in fp32 (one read of the logits) and the gradient in one more pass
(softmax times the summed upstream gradient, plus the picks), in the logits' own dtype.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

# Rows per chunk: about a million fp32 values (4 MB) stays in cache across the chunk's passes
# (measured on 2,040 x 49,152 bf16 logits: 16 rows 0.7 s fwd+bwd, 256 rows 2.3 s); small
# vocabularies (classification, NER) take all their rows in one chunk.
CHUNK_VALUES = 1 << 20


def _chunk_rows(logits: torch.Tensor) -> int:
    return max(1, CHUNK_VALUES // max(logits.shape[-1], 1))


def _scaled(rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """A fresh fp32 copy of ``rows / temperature``."""
    rows = rows.float() if rows.dtype != torch.float32 else rows.clone()
    return rows if temperature == 1.0 else rows.div_(temperature)


class _PickedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, indices: torch.Tensor, temperature: float):
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        step = _chunk_rows(logits)
        for start in range(0, logits.shape[0], step):
            rows = _scaled(logits[start : start + step], temperature)
            lse[start : start + step] = torch.logsumexp(rows, -1)
        ctx.save_for_backward(logits, indices, lse)
        ctx.temperature = temperature
        return logits.gather(-1, indices).float() / temperature - lse[:, None]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, indices, lse = ctx.saved_tensors
        t = ctx.temperature
        grad = grad.float()
        total = grad.sum(-1, keepdim=True)
        out = torch.empty_like(logits)
        step = _chunk_rows(logits)
        for start in range(0, logits.shape[0], step):
            end = start + step
            chunk = _scaled(logits[start:end], t).sub_(lse[start:end, None]).exp_()
            chunk.mul_(-total[start:end]).scatter_add_(-1, indices[start:end], grad[start:end])
            out[start:end] = chunk if t == 1.0 else chunk.div_(t)
        return out, None, None


# id(logits) -> (logits, temperature, [(indices, picks)]) while a ``shared_picks`` block runs
_SHARED: dict[int, tuple] = {}


def picked_log_probs(
    logits: torch.Tensor, indices: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """(N, m) fp32 ``log_softmax(logits / temperature)`` gathered at ``indices`` (N, m)."""
    indices = indices.long()
    entry = _SHARED.get(id(logits))
    if entry is not None and entry[0] is logits and entry[1] == float(temperature):
        for stored, picks in entry[2]:
            if stored.shape == indices.shape and torch.equal(stored, indices):
                return picks
    return _PickedLogProbs.apply(logits, indices, float(temperature))


@contextmanager
def shared_picks(
    logits: torch.Tensor, index_sets: Sequence[torch.Tensor], temperature: float = 1.0
) -> Iterator[None]:
    """Within the block, ``picked_log_probs(logits, idx, temperature)`` for an ``idx`` equal to
    one of ``index_sets`` is a slice of one combined pick: the terms that read the same LLM
    logits (top-k KD and cross-entropy at T = 1) share one normaliser pass and one backward
    pass instead of a full pass over the (N, V) logits each."""
    if len(index_sets) < 2:
        yield
        return
    sets = [i.long() for i in index_sets]
    combined = _PickedLogProbs.apply(logits, torch.cat(sets, -1), float(temperature))
    picks = combined.split([i.shape[-1] for i in sets], -1)
    key = id(logits)
    _SHARED[key] = (logits, float(temperature), list(zip(sets, picks, strict=True)))
    try:
        yield
    finally:
        _SHARED.pop(key, None)


@torch.no_grad()
def top_k_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, k) fp32 log-probs of the k most likely tokens per row and their (N, k) indices,
    chunked like the loss path (the teacher's side of the top-k cache)."""
    values, indices = [], []
    step = _chunk_rows(logits)
    for start in range(0, logits.shape[0], step):
        rows = logits[start : start + step].float()
        top = rows.topk(k, dim=-1)
        values.append(top.values - torch.logsumexp(rows, -1, keepdim=True))
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)
