"""An optional linear-chain CRF over a token classifier's tag scores, with IOB2 constraints:
no ``I-X`` after ``O``, after the start, or after a tag of another type. Those transitions are
fixed at -10,000 (never learned, never decoded), so Viterbi always emits a valid IOB2 sequence.

The CRF lives on the model as ``model.crf`` (its weights are saved with the model, and
``config.slimformer_crf`` says so). Plain ``transformers`` loads the folder and ignores them
(argmax decoding); slimformer's loader puts the CRF back (Viterbi decoding).
"""

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel

CRF_ATTR = "slimformer_crf"
FORBIDDEN = -1e4


def allowed_transitions(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(from, to) mask of IOB2-valid transitions, and the tags a sentence may start with."""

    def kind(tag: str) -> tuple[str, str]:
        return (tag[0], tag[2:]) if tag[:2] in ("B-", "I-") else ("O", "")

    n = len(labels)
    allowed = torch.ones(n, n, dtype=torch.bool)
    start = torch.ones(n, dtype=torch.bool)
    for j, to in enumerate(labels):
        prefix, entity = kind(to)
        if prefix != "I":
            continue
        start[j] = False
        for i, frm in enumerate(labels):
            p, e = kind(frm)
            allowed[i, j] = p in ("B", "I") and e == entity
    return allowed, start


class IOB2CRF(nn.Module):
    def __init__(self, labels: list[str]) -> None:
        super().__init__()
        n = len(labels)
        self.transitions = nn.Parameter(torch.zeros(n, n))
        self.start = nn.Parameter(torch.zeros(n))
        self.end = nn.Parameter(torch.zeros(n))
        allowed, start_allowed = allowed_transitions(labels)
        self.register_buffer("penalty", (~allowed).float() * FORBIDDEN, persistent=False)
        self.register_buffer(
            "start_penalty", (~start_allowed).float() * FORBIDDEN, persistent=False
        )

    def _trans(self) -> torch.Tensor:
        return self.transitions + self.penalty

    def log_likelihood(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """log p(tags | emissions) per sentence; (B, T, C), (B, T), (B, T) left-aligned."""
        emissions, mask = emissions.float(), mask.bool()
        b, t, _ = emissions.shape
        tags = tags.clamp(min=0)
        trans = self._trans()
        first = self.start + self.start_penalty
        score = first[tags[:, 0]] + emissions[torch.arange(b), 0, tags[:, 0]]
        alpha = first + emissions[:, 0]  # (B, C)
        for i in range(1, t):
            m = mask[:, i]
            step = trans[tags[:, i - 1], tags[:, i]] + emissions[torch.arange(b), i, tags[:, i]]
            score = score + step * m
            nxt = torch.logsumexp(alpha[:, :, None] + trans[None] + emissions[:, i, None, :], 1)
            alpha = torch.where(m[:, None], nxt, alpha)
        last = tags[torch.arange(b), mask.sum(1).clamp(min=1) - 1]
        score = score + self.end[last]
        return score - torch.logsumexp(alpha + self.end, dim=1)

    def log_marginals(
        self, emissions: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
    ) -> torch.Tensor:
        """log p(tag at word t | sentence) under the CRF with every score divided by
        ``temperature`` (forward-backward; differentiable). (B, T, C); rows past a sentence's
        length are meaningless. Posterior KD matches these to the teacher's tag distribution:
        what the CRF decodes from, unlike a softmax of its emission scores alone."""
        emissions, mask = emissions.float() / temperature, mask.bool()
        t = emissions.shape[1]
        trans = self._trans() / temperature
        end = self.end / temperature
        alphas = [(self.start + self.start_penalty) / temperature + emissions[:, 0]]
        for i in range(1, t):
            nxt = torch.logsumexp(alphas[-1][:, :, None] + trans[None] + emissions[:, i, None], 1)
            alphas.append(torch.where(mask[:, i, None], nxt, alphas[-1]))
        betas = [end.expand_as(alphas[0])]
        for i in range(t - 2, -1, -1):  # beta_i(y) = log sum_y' exp(trans + e_{i+1} + beta_{i+1})
            nxt = torch.logsumexp(trans[None] + (emissions[:, i + 1] + betas[0])[:, None], 2)
            betas.insert(0, torch.where(mask[:, i + 1, None], nxt, end.expand_as(nxt)))
        log_z = torch.logsumexp(alphas[-1] + end, dim=1)
        return torch.stack(alphas, 1) + torch.stack(betas, 1) - log_z[:, None, None]

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi: the best IOB2-valid tag sequence of each sentence (its real length)."""
        emissions, mask = emissions.float(), mask.bool()
        b, t, _ = emissions.shape
        trans = self._trans()
        score = self.start + self.start_penalty + emissions[:, 0]
        back = []
        for i in range(1, t):
            total = score[:, :, None] + trans[None]  # (B, from, to)
            best, idx = total.max(1)
            nxt = best + emissions[:, i]
            m = mask[:, i, None]
            score = torch.where(m, nxt, score)
            back.append(torch.where(m, idx, torch.arange(idx.shape[1]).expand_as(idx)))
        score = score + self.end
        out = []
        lengths = mask.sum(1).tolist()
        for row in range(b):
            tag = int(score[row].argmax())
            path = [tag]
            for i in range(lengths[row] - 1, 0, -1):
                tag = int(back[i - 1][row, tag])
                path.append(tag)
            out.append(path[::-1][: lengths[row]])
        return out


def attach_crf(model: PreTrainedModel) -> IOB2CRF:
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    model.crf = IOB2CRF(labels)
    setattr(model.config, CRF_ATTR, True)
    return model.crf


def has_crf(model) -> bool:
    return isinstance(getattr(model, "crf", None), IOB2CRF)


def restore_crf(model: PreTrainedModel, ref: str) -> None:
    """Put back a saved CRF (``from_pretrained`` skips weights the class does not know)."""
    if not getattr(model.config, CRF_ATTR, False) or has_crf(model):
        return
    crf = attach_crf(model)
    state = {}
    for f in sorted(Path(ref).glob("*.safetensors")):
        state.update({k[4:]: v for k, v in load_file(str(f)).items() if k.startswith("crf.")})
    if state:
        crf.load_state_dict(state)
