"""The attention terms of every mapped layer at once, from the query/key projections.

Built per layer by autograd, attention KL is ~25 small ops forward and as many backward (scores,
masks, two log-softmaxes, the product, the masked mean), and at SST-2's ~14 tokens a batch it is
their number, not their size, that sets the time. Here one autograd Function takes the stacked
q/k of all layers, returns one value per layer, and writes the gradient of the student's scores
in closed form (KL: softmax(student) - teacher distribution; MSE: 2 (student - teacher)), so its
backward is that product and two batched matmuls. Values and gradients are those of the
per-layer terms (``attention_distribution_kl``, ``attention_score_mse``; tests/test_layerwise.py).
The teacher's side comes either from its q/k or as computed once (``teacher_side``, kept in the
layer-wise state cache).
"""

import math
from typing import Literal

import torch
from torch.autograd import Function

from slimformer.errors import ModelError
from slimformer.utils.fast_softmax import log_softmax, softmax

Kind = Literal["kl", "mse"]


def split_heads(x: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """(..., B, L, W) projections -> (... * B * heads, L, W / heads) in ``dtype``."""
    *batch, length, width = x.shape
    if width % heads:
        raise ModelError(f"Attention width {width} does not split into {heads} heads.")
    d = width // heads
    rows = x.to(dtype).reshape(-1, length, heads, d)
    return rows.transpose(1, 2).reshape(-1, length, d)


def pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) token mask -> (B, 1, L, L) mask of pairs whose query and key are both real."""
    m = mask.bool()
    return (m[:, None, :, None] & m[:, None, None, :]).float()


def _merge_heads(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of ``split_heads`` back to ``shape`` (n, B, L, W)."""
    n, b, length, width = shape
    return x.view(n, b, -1, length, x.shape[-1]).transpose(2, 3).reshape(n, b, length, width)


# torch's CPU exp leaves its vector path for inputs under about -87 (padding keys' log-
# probabilities sit at the dtype's minimum): in the SST-2 benchmark run each exp here took
# ~0.46 ms where ~0.03 would do (benchmarks/cpu_exp_range.py). Clamped, exp gives ~1.6e-38
# for what would be a denormal or 0: nothing at fp32 precision next to the real keys'
# probabilities, and a padding key's term stays 0 (its log-probabilities are equal in student
# and teacher).
LOWEST_FAST_EXP = -87.0


def _exp_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """exp on the vector path. What it gives the padding keys (~1.6e-38) must be multiplied
    by 0 before anything scales it: a denormal in the gradient's batched matmuls makes them
    ~70x slower on x86 (1.1 against 80 ms for 1152 x 59 x 59 @ 59 x 32;
    benchmarks/cpu_exp_range.py), and torch's flush-denormal setting does not reach them."""
    return log_probs.clamp(min=LOWEST_FAST_EXP).exp_()


def _scores(q: torch.Tensor, k: torch.Tensor, heads: int, dtype: torch.dtype):
    """Stacked (n, B, L, W) projections -> scaled scores (n, B, heads, L, L), and the split
    q/k (n * B * heads, L, W / heads) they came from."""
    n, b, length, _ = q.shape
    qh, kh = split_heads(q, heads, dtype), split_heads(k, heads, dtype)
    scores = torch.bmm(qh, kh.mT).mul_(1 / math.sqrt(qh.shape[-1]))
    return scores.view(n, b, heads, length, length), qh, kh


def teacher_side(
    kind: Kind, query: torch.Tensor, key: torch.Tensor, heads: int, mask: torch.Tensor
) -> torch.Tensor:
    """What the term ``kind`` compares the student with, from stacked (n, B, L, W) teacher
    projections, fp32 (n, B, heads, L, L): attention probabilities over the real keys (kl) or
    scores (mse). The state cache keeps this instead of q/k (same values every epoch)."""
    with torch.no_grad():
        t, _, _ = _scores(query, key, heads, torch.promote_types(query.dtype, torch.float32))
        if kind == "mse":
            return t
        padding_keys = ~mask.bool()[None, :, None, None, :]
        return softmax(t.masked_fill_(padding_keys, torch.finfo(t.dtype).min), -1)


class _AttentionTerm(Function):
    @staticmethod
    def forward(ctx, kind: Kind, mask, heads, q_s, k_s, teacher):
        dtype = torch.promote_types(q_s.dtype, torch.float32)  # fp32 under bf16 autocast
        real = mask.to(dtype)  # (B, L)
        s, qh, kh = _scores(q_s, k_s, heads, dtype)
        # the teacher's side may be fp16 (the state cache): the products below promote it
        if kind == "kl":  # KL(teacher || student) per real query row, padding keys left out
            padding_keys = ~mask.bool()[None, :, None, None, :]
            log_s = log_softmax(s.masked_fill_(padding_keys, torch.finfo(dtype).min), -1)
            # the pairs that count, real query and real key: the gradient is multiplied by
            # them, so its padding keys are exactly 0 (see _exp_log_probs)
            weights = pair_mask(mask).to(dtype)[None]  # (1, B, 1, L, L)
            p_t = teacher.mul(weights)
            # p_t = 0 (padding keys, padding rows) gives 0 x finite: log_s is a finite minimum
            # there, and log p_t is clamped (torch's xlogy is not vectorised on CPU: 2.5x)
            log_t = p_t.clamp(min=torch.finfo(dtype).tiny).log_()
            per_pair = log_t.sub_(log_s).mul_(p_t)
            count = real.sum().clamp(min=1.0) * heads
            values = per_pair.sum((1, 2, 3, 4)) / count
            ctx.save_for_backward(qh, kh, log_s, p_t, weights)
        else:  # squared error of the scores over pairs of real tokens
            pairs = pair_mask(mask).to(dtype)[None]  # (1, B, 1, L, L)
            diff = (s - teacher).mul_(pairs)
            count = pairs.sum().clamp(min=1.0) * heads
            values = diff.square().sum((1, 2, 3, 4)) / count
            ctx.save_for_backward(qh, kh, diff)
        ctx.kind, ctx.count, ctx.scale = kind, count, 1 / math.sqrt(qh.shape[-1])
        ctx.shapes = (q_s.shape, q_s.dtype, k_s.dtype)
        return values

    @staticmethod
    def backward(ctx, grad):
        shape, q_dtype, k_dtype = ctx.shapes
        per_layer = (grad / ctx.count)[:, None, None, None, None] * ctx.scale
        if ctx.kind == "kl":
            qh, kh, log_s, p_t, weights = ctx.saved_tensors
            g_scores = _exp_log_probs(log_s).sub_(p_t).mul_(weights).mul_(per_layer)
        else:
            qh, kh, diff = ctx.saved_tensors
            g_scores = diff.mul(per_layer * 2)
        g_scores = g_scores.view(-1, *g_scores.shape[-2:])
        g_q = _merge_heads(torch.bmm(g_scores, kh), shape).to(q_dtype)
        g_k = _merge_heads(torch.bmm(g_scores.mT, qh), shape).to(k_dtype)
        return None, None, None, g_q, g_k, None


def attention_term(
    kind: Kind,
    student_query: torch.Tensor,
    student_key: torch.Tensor,
    teacher_query: torch.Tensor,
    teacher_key: torch.Tensor,
    heads: int,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Per-layer values (n,) of the attention term ``kind`` between stacked projections
    (n, B, L, W_student) / (n, B, L, W_teacher), both split into ``heads`` heads, over the
    token mask (B, L). The teacher's side takes no gradient."""
    teacher = teacher_side(kind, teacher_query, teacher_key, heads, mask)
    return _AttentionTerm.apply(kind, mask, heads, student_query, student_key, teacher)


def attention_term_from_teacher(
    kind: Kind,
    student_query: torch.Tensor,
    student_key: torch.Tensor,
    teacher: torch.Tensor,
    heads: int,
    mask: torch.Tensor,
) -> torch.Tensor:
    """``attention_term`` with the teacher's side given in ``teacher_side``'s form (n, B,
    heads, L, L). For KL its padding keys must hold 0, as ``teacher_side`` and the state cache
    give them; its padding rows, and MSE's pairs with padding, are not read."""
    return _AttentionTerm.apply(kind, mask, heads, student_query, student_key, teacher.detach())
