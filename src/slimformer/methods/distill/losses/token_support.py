"""Teacher and student next-token distributions on a common support, for the LLM KD terms.

The teacher comes either as dense logits (N, V) (the teacher run online) or as its top-k
log-probabilities (``TopKLogProbs``, read from the top-k cache). With top-k, both distributions
are put on k + 1 bins: the teacher's k tokens plus one "tail" bin holding the rest of the mass.
The student's side is exact (its full softmax, gathered). The teacher's tail mass is exact at
T = 1; at other temperatures the tail is taken as spread evenly over the V - k other tokens
(its shape is not stored), so each tail token's probability is raised to 1/T.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slimformer.methods.distill.losses.picked_log_probs import picked_log_probs

TINY = 1e-12


@dataclass
class TopKLogProbs:
    """The teacher's k most likely next tokens per position, with their log-probs at T = 1."""

    indices: torch.Tensor  # (N, k) long
    log_probs: torch.Tensor  # (N, k) float
    vocab_size: int

    def to(self, device) -> "TopKLogProbs":
        return TopKLogProbs(self.indices.to(device), self.log_probs.to(device), self.vocab_size)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, clamped away from log(0)."""
    return torch.log((-torch.expm1(x.clamp(max=0))).clamp(min=TINY))


def teacher_bins(teacher: TopKLogProbs, temperature: float) -> torch.Tensor:
    """(N, k + 1) teacher log-probs at ``temperature``: the top-k, then the tail."""
    top = teacher.log_probs.float()
    tail = log1mexp(torch.logsumexp(top, -1, keepdim=True))  # log tail mass at T = 1
    if temperature != 1.0:
        rest = max(teacher.vocab_size - top.shape[-1], 1)
        tail = math.log(rest) + (tail - math.log(rest)) / temperature
        top = top / temperature
    return F.log_softmax(torch.cat([top, tail], -1), -1)


def student_bins(student: torch.Tensor, indices: torch.Tensor, temperature: float):
    """(N, k + 1) student log-probs at ``temperature`` on the teacher's top-k plus the tail."""
    top = picked_log_probs(student, indices, temperature)
    return torch.cat([top, log1mexp(torch.logsumexp(top, -1, keepdim=True))], -1)


def distributions(student: torch.Tensor, teacher, temperature: float):
    """(log p_teacher, log q_student) on one support: the vocabulary, or top-k + tail."""
    if isinstance(teacher, TopKLogProbs):
        return teacher_bins(teacher, temperature), student_bins(
            student, teacher.indices, temperature
        )
    return (
        F.log_softmax(teacher.float() / temperature, -1),
        F.log_softmax(student.float() / temperature, -1),
    )


def kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row, from log-probs."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)
