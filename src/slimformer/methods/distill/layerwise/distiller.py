"""The intermediate half of layer-wise KD: record both models, project the student's states to
the teacher's width (learned, one linear map per mapped layer, trained with the student and
never saved with it), and sum the weighted terms over the mapped layers."""

import logging
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel

from slimformer.errors import RecipeError
from slimformer.methods.distill.layerwise.config import IntermediateConfig
from slimformer.methods.distill.layerwise.mapping import layer_mapping
from slimformer.methods.distill.layerwise.recorder import Recorder, attention_scores
from slimformer.methods.distill.layerwise.state_cache import (
    Internals,
    Stored,
    TeacherStateCache,
)
from slimformer.methods.distill.losses import LAYER_LOSSES
from slimformer.methods.distill.losses.attention_from_projections import (
    attention_term_from_teacher,
    teacher_side,
)
from slimformer.methods.distill.schedules import value_at
from slimformer.methods.distill.teacher_targets import frozen_for_precision, teacher_precision
from slimformer.models.arch import arch_of, num_layers
from slimformer.models.prune import blocks, head_size

log = logging.getLogger("slimformer")

# the state cache's name for each fused attention term's teacher side
PAIR_FORMS = {"kl": "probs", "mse": "scores"}


def hidden_width(model: PreTrainedModel) -> int:
    return int(getattr(model.config, arch_of(model.config).hidden))


def heads_per_layer(model: PreTrainedModel) -> list[int]:
    """Attention heads of each block as the weights are (pruned models differ per layer)."""
    query = arch_of(model.config).query
    d = head_size(model.config)
    return [blk.get_submodule(query).out_features // d for blk in blocks(model)]


class Projector(nn.Module):
    """Student width -> teacher width, one map per student layer compared (key = layer number)."""

    def __init__(self, layers: list[int], student_width: int, teacher_width: int) -> None:
        super().__init__()
        self.maps = nn.ModuleDict(
            {str(i): nn.Linear(student_width, teacher_width) for i in layers}
            if student_width != teacher_width
            else {}
        )

    def forward(self, states: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {i: self.maps[str(i)](h) if str(i) in self.maps else h for i, h in states.items()}


class LayerwiseDistiller:
    def __init__(
        self,
        cfg: IntermediateConfig,
        student: PreTrainedModel,
        teacher: Callable[[], PreTrainedModel],
        forward: Callable[[PreTrainedModel, dict], object],
        seed: int = 0,
        state_cache: Callable[[list[tuple[str, int, int]]], TeacherStateCache] | None = None,
        precision: str = "fp32",
    ) -> None:
        """``teacher`` loads the teacher (once); ``forward`` is the task's model call;
        ``state_cache`` opens the on-disk cache of teacher states for a layout (None: online);
        ``precision``: the teacher's forward in fp32 or under bf16 autocast.
        ``on_teacher_output(batch, values)``, when set, receives the aligned outputs of every
        teacher forward run here (so the logit cache is filled by the same pass)."""
        self.cfg = cfg
        self.forward = forward
        self.precision = precision
        self.on_teacher_output: Callable[[dict, torch.Tensor], None] | None = None
        self._teacher = frozen_for_precision(teacher(), precision)
        s_layers, t_layers = num_layers(student.config), num_layers(self._teacher.config)
        self.mapping = {0: 0, **layer_mapping(s_layers, t_layers, cfg.mapping)}
        self.terms = {name: LAYER_LOSSES.get(name) for name in cfg.terms}
        needs = {t.needs for t in self.terms.values()}
        blocks_ = list(range(1, s_layers + 1))
        hidden = ([0] if "embeddings" in needs else []) + (blocks_ if "hidden" in needs else [])
        attention = blocks_ if "attention" in needs else []
        if attention:
            self._check_heads(student, attention)
        self.student_recorder = Recorder(student, hidden, attention)
        self.teacher_recorder = Recorder(
            self._teacher, [self.mapping[i] for i in hidden], [self.mapping[i] for i in attention]
        )
        with torch.random.fork_rng():  # the projections' init depends on the seed only
            torch.manual_seed(seed)
            self.projector = Projector(hidden, hidden_width(student), hidden_width(self._teacher))
        self._head_size = (head_size(student.config), head_size(self._teacher.config))
        self._attention_layers = attention
        # where the state cache keeps a term's teacher side: kind -> slice of Internals.pairs
        self._pair_parts: dict[str, slice] = {}
        self._pair_heads = 0
        self.state_cache = state_cache(self._layout(hidden, attention)) if state_cache else None

    def _layout(self, hidden: list[int], attention: list[int]) -> list[tuple[str, int, int]]:
        """The teacher parts the losses read, with their widths (cache columns); the fused
        attention terms' teacher sides as pair parts (with their head count) where their heads
        are the same in every mapped layer, else the q/k they are rebuilt from."""
        width = hidden_width(self._teacher)
        layout = [("hidden", self.mapping[i], width) for i in hidden]
        heads = self._fused_heads(attention)
        kinds = [t.attention_kind for t in self.terms.values() if t.needs == "attention"]
        cached = [k for k in dict.fromkeys(kinds) if k is not None and heads is not None]
        for n, kind in enumerate(cached):
            self._pair_parts[kind] = slice(n * len(attention), (n + 1) * len(attention))
            layout += [(PAIR_FORMS[kind], self.mapping[i], heads) for i in attention]
        self._pair_heads = heads if cached else 0
        if len(cached) < len(kinds):  # a term that rebuilds the teacher's side from q/k
            query = arch_of(self._teacher.config).query
            for i in attention:
                t = self.mapping[i]
                q_width = blocks(self._teacher)[t - 1].get_submodule(query).out_features
                layout += [("query", t, q_width), ("key", t, q_width)]
        return layout

    def _fused_heads(self, attention: list[int]) -> int | None:
        """The head count the fused attention terms split every mapped layer into, or None
        where they go layer by layer (heads: mean, or counts that differ between layers)."""
        if not attention or self.cfg.heads == "mean":
            return None
        if self.cfg.heads == "regroup":
            return self.cfg.relation_heads
        counts = {heads_per_layer(self._teacher)[self.mapping[i] - 1] for i in attention}
        return counts.pop() if len(counts) == 1 else None

    def _check_heads(self, student: PreTrainedModel, layers: list[int]) -> None:
        s_heads, t_heads = heads_per_layer(student), heads_per_layer(self._teacher)
        pairs = [(s_heads[m - 1], t_heads[self.mapping[m] - 1]) for m in layers]
        if self.cfg.heads == "same" and any(s != t for s, t in pairs):
            raise RecipeError(
                f"Attention terms compare head by head, but the student has "
                f"{[s for s, _ in pairs]} heads and the mapped teacher layers "
                f"{[t for _, t in pairs]}. Set intermediate.heads to 'mean' (average over heads) "
                f"or 'regroup' with relation_heads (e.g. 4) to compare them."
            )
        if self.cfg.heads == "regroup":
            r = self.cfg.relation_heads
            widths = {
                "student": hidden_width(student),
                "teacher": hidden_width(self._teacher),
            }
            bad = [f"{k} width {w}" for k, w in widths.items() if w % r]
            if bad:
                raise RecipeError(
                    f"relation_heads {r} must divide both attention widths ({', '.join(bad)})."
                )

    def describe(self) -> dict:
        """What the report stores: the mapping in use, terms, head rule, projections."""
        return {
            "layer_mapping": {f"student_{s}": f"teacher_{t}" for s, t in self.mapping.items()},
            "terms": {k: _dump(v) for k, v in self.cfg.terms.items()},
            "heads": self.cfg.heads,
            "relation_heads": self.cfg.relation_heads,
            "projections": sorted(int(k) for k in self.projector.maps),
        }

    def teacher_internals(self, batch: dict) -> Recorder | Internals:
        """From the state cache when it has the batch, else from a teacher forward (which
        fills the cache)."""
        cache = self.state_cache
        if cache is None:
            return self._teacher_forward(batch)
        idx = batch["idx"].cpu().numpy()
        if not cache.missing(idx).any():
            return self._cached(idx, batch)
        # the fp16 values written: cold and warm runs see the same
        stored = self.fill_cache(batch)
        return self._on_device(cache.unpack(stored, batch["attention_mask"]), batch)

    def fill_cache(self, batch: dict) -> Stored:
        """A teacher forward whose states go to the state cache; returns the values as stored
        (``TeacherStateCache.write``)."""
        rec = self._teacher_forward(batch)
        mask = batch["attention_mask"]
        pairs = self._teacher_pairs(rec, mask) if self._pair_parts else None
        return self.state_cache.write(batch["idx"].cpu().numpy(), rec, mask, pairs)

    def _teacher_pairs(self, rec: Recorder, mask: torch.Tensor) -> torch.Tensor:
        """The cached attention terms' teacher sides, (parts, B, heads, L, L) in the layout's
        order."""
        layers = [self.mapping[i] for i in self._attention_layers]
        q = torch.stack([rec.query[t] for t in layers])
        k = torch.stack([rec.key[t] for t in layers])
        sides = [teacher_side(kind, q, k, self._pair_heads, mask) for kind in self._pair_parts]
        return sides[0] if len(sides) == 1 else torch.cat(sides)

    def _teacher_forward(self, batch: dict) -> Recorder:
        """The teacher's forward on ``batch``, recorded; its outputs go to
        ``on_teacher_output`` (the logit cache)."""
        device = batch["input_ids"].device
        if next(self._teacher.parameters()).device != device:
            self._teacher.to(device)
        with (
            torch.no_grad(),
            teacher_precision(self.precision, device),
            self.teacher_recorder.record() as rec,
        ):
            out = self.forward(self._teacher, batch)
        if self.on_teacher_output is not None:
            self.on_teacher_output(batch, out.values)
        return rec

    def _cached(self, idx, batch: dict) -> Internals:
        return self._on_device(self.state_cache.read(idx, batch["attention_mask"]), batch)

    @staticmethod
    def _on_device(internals: Internals, batch: dict) -> Internals:
        device = batch["input_ids"].device
        for part in (internals.hidden, internals.query, internals.key):
            for k in part:
                part[k] = part[k].to(device)
        if internals.pairs is not None:
            internals.pairs = internals.pairs.to(device)
        return internals

    def loss(
        self, batch: dict, progress: float, teacher: Recorder | Internals | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted layer-wise loss; the student's forward must have run under ``recording``.
        ``teacher``: the batch's teacher internals when already fetched."""
        student = self.student_recorder
        teacher = teacher if teacher is not None else self.teacher_internals(batch)
        mask = batch["attention_mask"].bool()
        # fp32 whatever precision the student's forward ran in (bf16 autocast)
        projected = self.projector({k: v.float() for k, v in student.hidden.items()})
        total, logs = 0.0, {}
        for name, term in self.terms.items():
            weight = value_at(self.cfg.terms[name], progress)
            logs[f"weight_{name}"] = weight
            if weight == 0:
                continue
            if term.needs == "attention":
                values = self._attention_values(term, student, teacher, mask)
            else:
                layers = [0] if term.needs == "embeddings" else [i for i in projected if i > 0]
                values = torch.stack(
                    [term.fn(projected[m], teacher.hidden[self.mapping[m]], mask) for m in layers]
                )
            value = values.mean()  # mean over layers: weights keep their meaning
            logs[f"loss_{name}"] = value.detach().item()
            total = total + weight * value
        return total, logs

    def _attention_values(self, term, student: Recorder, teacher, mask) -> torch.Tensor:
        """One value per mapped layer: from the q/k projections of all layers at once where the
        term has that form and heads pair up one to one (same, regroup), the teacher's side
        as the state cache keeps it where it does, else layer by layer from the scores (mean
        over heads)."""
        pairs = getattr(teacher, "pairs", None)
        if pairs is not None and term.attention_kind in self._pair_parts:
            return self._from_cached_side(term.attention_kind, student, pairs, mask)
        layers = list(student.query)
        if term.from_projections is None or self.cfg.heads == "mean":
            return torch.stack([term.fn(*self._scores(student, teacher, m), mask) for m in layers])
        t_layers = [self.mapping[m] for m in layers]
        parts = [
            [student.query[m] for m in layers],
            [student.key[m] for m in layers],
            [teacher.query[t] for t in t_layers],
            [teacher.key[t] for t in t_layers],
        ]
        if self.cfg.heads == "regroup":
            heads = [self.cfg.relation_heads] * len(layers)
        else:
            heads = [q.shape[-1] // self._head_size[0] for q in parts[0]]
        uniform = len(set(heads)) == 1 and all(len({x.shape for x in p}) == 1 for p in parts)
        if uniform:  # one call for all layers (pruned layers may differ in width)
            return term.from_projections(*(torch.stack(p) for p in parts), heads[0], mask)
        return torch.cat(
            [
                term.from_projections(*(p[i][None] for p in parts), heads[i], mask)
                for i in range(len(layers))
            ]
        )

    def _from_cached_side(self, kind: str, student: Recorder, pairs, mask) -> torch.Tensor:
        """The fused term against the teacher's side from the state cache: all layers in one
        call, or one call per layer where the student's layers differ in width (pruned)."""
        side = pairs[self._pair_parts[kind]]  # (layers, B, heads, L, L)
        q = [student.query[m] for m in self._attention_layers]
        k = [student.key[m] for m in self._attention_layers]
        if len({x.shape for x in q + k}) == 1:
            return attention_term_from_teacher(
                kind, torch.stack(q), torch.stack(k), side, self._pair_heads, mask
            )
        return torch.cat(
            [
                attention_term_from_teacher(
                    kind, q[i][None], k[i][None], side[i : i + 1], self._pair_heads, mask
                )
                for i in range(len(q))
            ]
        )

    def _scores(self, student: Recorder, teacher: Recorder, m: int):
        t = self.mapping[m]
        q_s, k_s, q_t, k_t = student.query[m], student.key[m], teacher.query[t], teacher.key[t]
        if self.cfg.heads == "regroup":
            r = self.cfg.relation_heads
            return attention_scores(q_s, k_s, r), attention_scores(q_t, k_t, r)
        s = attention_scores(q_s, k_s, q_s.shape[-1] // self._head_size[0])
        t_scores = attention_scores(q_t, k_t, q_t.shape[-1] // self._head_size[1])
        if self.cfg.heads == "mean":
            return s.mean(1, keepdim=True), t_scores.mean(1, keepdim=True)
        return s, t_scores

    def close(self) -> None:
        if self.state_cache is not None:
            self.state_cache.close()
        self.student_recorder.remove()
        self.teacher_recorder.remove()


def _dump(v) -> object:
    return v.model_dump() if hasattr(v, "model_dump") else v
