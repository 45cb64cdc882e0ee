"""Train only the rows of the word-embedding table that the training data can reach.

A 30k x 384 table is two thirds of a 3-layer MiniLM student's weights, and AdamW reads and
writes all of it every step (gradient, clipping norm, two moments), although a row whose token
never occurs in the training data never gets a gradient. Such a row keeps zero moments for the
whole run, so AdamW's update for it is the weight decay alone: ``w <- w * (1 - lr * wd)``. This
module makes that shortcut exact rather than approximate: the seen rows become one smaller
parameter that AdamW updates densely, exactly as before (their zero-gradient steps included),
and the unseen rows get the product of the decay factors when the table is written back (before
evaluation, saving, and at the end). On SST-2 (8,000 training sentences) 8,490 of 30,522 rows
are seen; the step of a 3-layer bf16 student on 2 cores lost ~16 ms of ~82 with the whole table
frozen (the upper bound of the saving; docs/benchmarks.md).
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("slimformer")

# above this share of the vocabulary the smaller parameter saves too little to be worth it
MAX_SEEN_FRACTION = 0.9
CHECKED_DEVICE_BATCHES = 20


class SeenRowsEmbedding(nn.Module):
    """Stands in for an ``nn.Embedding`` while it trains: ``rows`` holds the seen rows (the
    only trained parameter), ``table`` the whole table, written back by ``write_back``. In
    eval mode it writes back and looks up the whole table, so any token id works."""

    def __init__(self, table: nn.Embedding, seen: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.rows = nn.Parameter(table.weight.detach()[seen].clone())
        slot = torch.full((table.num_embeddings,), -1, dtype=torch.long)
        slot[seen] = torch.arange(len(seen))
        self.register_buffer("slot", slot)
        self.register_buffer("seen", seen.clone())
        # product of the decay factors not yet applied to the unseen rows (in checkpoints)
        self.register_buffer("pending_decay", torch.ones((), dtype=torch.float64))
        padding = -1 if table.padding_idx is None else int(slot[table.padding_idx])
        self.padding_slot = padding if padding >= 0 else None
        self.stale = True  # rows changed since the last write-back
        self.checked_batches = 0
        table.weight.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.write_back()
            return self.table(input_ids)
        self.stale = True
        slots = self.slot[input_ids]
        # the check reads a value back: free on CPU, a device sync elsewhere, where the first
        # batches show what a collator adds (its padding) and later ones are trusted
        self.checked_batches += 1
        check = slots.device.type == "cpu" or self.checked_batches <= CHECKED_DEVICE_BATCHES
        if check and bool((slots < 0).any()):
            unseen = sorted(set(input_ids[slots < 0].tolist()))[:5]
            raise RuntimeError(
                f"token ids {unseen} reached the model in training but are not in its training "
                "data (the rows that train were chosen from it); set the stage's "
                "embedding_rows: all"
            )
        return F.embedding(
            slots, self.rows, self.padding_slot, scale_grad_by_freq=self.table.scale_grad_by_freq
        )

    def decay_unseen(self, factor: float) -> None:
        """What one AdamW step did to every unseen row (zero gradient, zero moments)."""
        self.pending_decay.mul_(factor)
        self.stale = True

    @torch.no_grad()
    def write_back(self) -> None:
        if not self.stale:
            return
        self.stale = False
        weight = self.table.weight
        if self.pending_decay.item() != 1.0:
            weight.mul_(self.pending_decay.to(weight.dtype))
            self.pending_decay.fill_(1.0)
        weight[self.seen] = self.rows.detach().to(weight.dtype)


def seen_token_ids(
    input_ids: Iterable[Iterable[int]], vocab_size: int, extra: Iterable[int | None] = ()
) -> torch.Tensor:
    """The sorted distinct ids of the training rows, and ``extra`` ones (padding added by the
    collator; None and out-of-range ids are left out)."""
    seen = np.zeros(vocab_size, dtype=bool)
    for ids in input_ids:
        seen[np.asarray(ids, dtype=np.int64)] = True
    seen[[i for i in extra if isinstance(i, int) and 0 <= i < vocab_size]] = True
    return torch.from_numpy(np.flatnonzero(seen))


def _input_table(model: nn.Module) -> nn.Embedding | None:
    """The model's trained, untied word-embedding table, or None where rows can't be split:
    frozen, tied to an output layer (whose gradient reaches every row), or a lookup that is
    not a plain one (a subclass such as a scaled embedding, a forward patched on the module
    as QAT's fake quantization does, max_norm renormalisation, sparse gradients)."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        table = get() if get is not None else None
    except NotImplementedError:
        return None
    plain = (
        type(table) is nn.Embedding
        and "forward" not in vars(table)
        and table.max_norm is None
        and not table.sparse
    )
    if not plain or not table.weight.requires_grad:
        return None
    output = getattr(model, "get_output_embeddings", lambda: None)()
    if output is not None and getattr(output, "weight", None) is table.weight:
        return None
    return table


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> int:
    """Every reference to ``old`` in the module tree (a table may be shared) becomes ``new``."""
    parents = [
        (module, name)
        for module in model.modules()
        for name, child in module.named_children()
        if child is old
    ]
    for module, name in parents:
        setattr(module, name, new)
    return len(parents)


def train_seen_rows(
    model: nn.Module,
    input_ids: Iterable[Iterable[int]],
    mode: Literal["auto", "seen", "all"] = "auto",
    pad_token_id: int | None = None,
) -> Callable[[], None]:
    """Put a ``SeenRowsEmbedding`` in place of the model's word-embedding table when ``mode``
    is "seen", or "auto" and the seen share is at most ``MAX_SEEN_FRACTION``. Returns what
    writes the table back and puts it in place again (a no-op when nothing was replaced).
    ``pad_token_id``: the id the collator pads with (the rows themselves are unpadded)."""
    table = _input_table(model) if mode != "all" else None
    if table is None:
        if mode == "seen":
            log.info("embedding_rows: the token embeddings are frozen or tied; all rows train")
        return lambda: None
    config_pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    seen = seen_token_ids(
        input_ids, table.num_embeddings, (pad_token_id, config_pad, table.padding_idx)
    )
    share = len(seen) / table.num_embeddings
    if mode == "auto" and share > MAX_SEEN_FRACTION:
        return lambda: None
    stand_in = SeenRowsEmbedding(table, seen)
    _replace(model, table, stand_in)
    log.info(
        "embedding rows: %d of %d token ids occur in the training data; only those rows "
        "train, the others get AdamW's weight decay alone (the same update)",
        len(seen),
        table.num_embeddings,
    )

    def restore() -> None:
        stand_in.write_back()
        _replace(model, stand_in, table)
        table.weight.requires_grad_(True)

    return restore


def stand_ins(model: nn.Module) -> list[SeenRowsEmbedding]:
    return [m for m in model.modules() if isinstance(m, SeenRowsEmbedding)]


@contextmanager
def tables_in_place(model: nn.Module) -> Iterator[None]:
    """Within the block the model holds its written-back tables (for ``save_pretrained``:
    a standard folder, no stand-in keys); the stand-ins come back afterwards."""
    swapped = stand_ins(model)
    for stand_in in swapped:
        stand_in.write_back()
        _replace(model, stand_in, stand_in.table)
    try:
        yield
    finally:
        for stand_in in swapped:
            _replace(model, stand_in.table, stand_in)


def follow_weight_decay(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """After every optimizer step, record that step's decay factor on each stand-in: the lr
    and weight decay of the parameter group its ``rows`` are in (read before the scheduler
    moves the lr)."""
    tables = {id(s.rows): s for s in stand_ins(model)}
    if not tables:
        return

    def after_step(opt: torch.optim.Optimizer, args, kwargs) -> None:
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in tables:
                    tables[id(p)].decay_unseen(1.0 - float(group["lr"]) * group["weight_decay"])

    optimizer.register_step_post_hook(after_step)
