"""What caching the teacher's attention log-probabilities (instead of its queries and keys) would
save in the attention KL term, inside the real layer-wise run (issue 3). An estimate for a
change not yet built.

Today the state cache keeps the teacher's q/k projections, and every step rebuilds the
teacher's scores and log-probabilities from them (head split, batched matmul, mask,
log-softmax, exp). Those are the same at every epoch. This runs the `cache-bf16` row of
textbrewer_compare.py and, in its second epoch, reads each batch's cached teacher states and
computes the teacher's log-probabilities outside the timer. It then times the batch's forward +
backward twice, the order alternating: with the term as shipped (teacher side from q/k), and
with a student-only term that takes the precomputed log-probabilities. Both read the same
fetched states, so the cache read is in neither timing. The smaller cache (heads x L values a
token per layer instead of 2 x 384) would save reading time on top of this.

    .venv/bin/python benchmarks/cached_attention_ab.py
"""

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.autograd import Function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402

from slimformer.methods.distill import objective  # noqa: E402
from slimformer.methods.distill.layerwise import distiller  # noqa: E402
from slimformer.methods.distill.losses import attention_from_projections as fused  # noqa: E402
from slimformer.utils.fast_softmax import log_softmax  # noqa: E402

HEADS = 12  # the MiniLM teacher's and the student's


class StudentSideKL(Function):
    """The fused attention KL term with the teacher's log-probabilities and probabilities given
    (n, B, heads, L, L): the student's side of ``_AttentionTerm`` only."""

    @staticmethod
    def forward(ctx, mask, q_s, k_s, log_t, p_t):
        n, b, length, _ = q_s.shape
        real = mask.float()
        qh = fused.split_heads(q_s, HEADS, torch.float32)
        kh = fused.split_heads(k_s, HEADS, torch.float32)
        scale = 1 / math.sqrt(qh.shape[-1])
        s = torch.bmm(qh, kh.mT).mul_(scale).view(n, b, HEADS, length, length)
        padding_keys = ~mask.bool()[None, :, None, None, :]
        log_s = log_softmax(s.masked_fill_(padding_keys, torch.finfo(torch.float32).min), -1)
        per_row = (log_t - log_s).mul_(p_t).sum(-1)
        count = real.sum().clamp(min=1.0) * HEADS
        values = (per_row * real[None, :, None, :]).sum((1, 2, 3)) / count
        ctx.save_for_backward(qh, kh, log_s, p_t, real[None, :, None, :, None])
        ctx.count, ctx.scale, ctx.shape, ctx.dtype = count, scale, q_s.shape, q_s.dtype
        return values

    @staticmethod
    def backward(ctx, grad):
        qh, kh, log_s, p_t, weights = ctx.saved_tensors
        per_layer = (grad / ctx.count)[:, None, None, None, None] * ctx.scale
        g = fused._exp_log_probs(log_s).sub_(p_t).mul_(weights).mul_(per_layer)
        g = g.view(-1, *g.shape[-2:])
        g_q = fused._merge_heads(torch.bmm(g, kh), ctx.shape).to(ctx.dtype)
        g_k = fused._merge_heads(torch.bmm(g.mT, qh), ctx.shape).to(ctx.dtype)
        return None, g_q, g_k, None, None


def teacher_log_probs(internals, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the cache would hold: the teacher's log-probabilities (and probabilities)."""
    layers = sorted(internals.query)
    q_t = torch.stack([internals.query[t] for t in layers])
    k_t = torch.stack([internals.key[t] for t in layers])
    n, b, length, width = q_t.shape
    qh = fused.split_heads(q_t, HEADS, torch.float32)
    kh = fused.split_heads(k_t, HEADS, torch.float32)
    t = torch.bmm(qh, kh.mT).mul_(1 / math.sqrt(width // HEADS))
    t = t.view(n, b, HEADS, length, length)
    padding_keys = ~mask.bool()[None, :, None, None, :]
    log_t = log_softmax(t.masked_fill_(padding_keys, torch.finfo(torch.float32).min), -1)
    return log_t, fused._exp_log_probs(log_t)


def main() -> None:
    torch.set_num_threads(2)
    seconds = {"cached log-probs": [], "from q/k": []}
    losses = {"cached log-probs": [], "from q/k": []}
    steps_per_epoch = -(-8000 // 32)
    step = {"n": 0}
    held = {"distillers": [], "internals": None, "log_probs": None, "on": False}
    real_init = distiller.LayerwiseDistiller.__init__
    real_internals = distiller.LayerwiseDistiller.teacher_internals
    real_values = distiller.LayerwiseDistiller._attention_values
    real_call = objective.KDLoss.__call__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        held["distillers"].append(self)

    def internals(self, batch):
        return held["internals"] if held["internals"] is not None else real_internals(self, batch)

    def attention_values(self, term, student, teacher, mask):
        if not held["on"]:
            return real_values(self, term, student, teacher, mask)
        layers = list(student.query)
        q_s = torch.stack([student.query[m] for m in layers])
        k_s = torch.stack([student.key[m] for m in layers])
        return StudentSideKL.apply(mask, q_s, k_s, *held["log_probs"])

    def call(self, model, batch, progress):
        step["n"] += 1
        if step["n"] > steps_per_epoch + 2:  # second epoch: the teacher states are cached
            fetched = real_internals(held["distillers"][0], batch)
            held["internals"] = fetched
            held["log_probs"] = teacher_log_probs(fetched, batch["attention_mask"])
            params = list(model.parameters())
            if self.aux_module is not None:
                params += list(self.aux_module.parameters())
            for on in (True, False) if step["n"] % 2 else (False, True):
                held["on"] = on
                torch.manual_seed(step["n"])  # the same dropout masks for both
                started = time.perf_counter()
                loss, _ = real_call(self, model, batch, progress)
                loss.backward()
                kind = "cached log-probs" if on else "from q/k"
                seconds[kind].append(time.perf_counter() - started)
                losses[kind].append(loss.item())
                for p in params:
                    p.grad = None
            held["on"], held["internals"] = False, None
        return real_call(self, model, batch, progress)

    distiller.LayerwiseDistiller.__init__ = init
    distiller.LayerwiseDistiller.teacher_internals = internals
    distiller.LayerwiseDistiller._attention_values = attention_values
    objective.KDLoss.__call__ = call
    textbrewer_compare.run_timed_row()
    from slimformer.hardware.cpu_features import cpu_name

    now, cached = (np.mean(seconds[k]) * 1000 for k in ("from q/k", "cached log-probs"))
    print(
        f"{cpu_name()}: forward + backward {now:.2f} ms with the teacher's side from q/k, "
        f"{cached:.2f} ms with its log-probabilities given; "
        + textbrewer_compare.paired_saving(seconds["from q/k"], seconds["cached log-probs"])
        + f"; largest loss difference {np.abs(np.subtract(*losses.values())).max():.2e}"
    )


if __name__ == "__main__":
    main()
