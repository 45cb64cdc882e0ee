"""Augmented training rows for a distill stage: copies of the labeled sentences made by
``methods.augment``, tokenized like unlabeled text (label -100: the teacher's soft labels are
their only target, through the usual cache)."""

import logging

import datasets
import numpy as np

from slimformer.errors import RecipeError
from slimformer.methods.augment.augment import augment_texts
from slimformer.methods.augment.config import AugmentConfig
from slimformer.methods.augment.mlm import MaskedLMCandidates
from slimformer.methods.augment.neighbours import EmbeddingNeighbours
from slimformer.models.loading import check_model_ref
from slimformer.pipeline.context import RunContext

log = logging.getLogger("slimformer")


def augmented_rows(ctx: RunContext, cfg: AugmentConfig) -> tuple[datasets.Dataset, dict]:
    """Copies of the labeled rows; for text pairs, each copy edits both texts (the teacher
    scores the new pair, so a copy may drift from the original's label: that is the point)."""
    data = ctx.recipe.data
    if not hasattr(ctx.task, "prepare_unlabeled"):
        raise RecipeError(f"augment is not supported for the {ctx.task.name} task.")
    # token-classification rows hold word lists: augmented as space-joined sentences
    columns = [data.text_column] + ([data.text_pair_column] if data.text_pair_column else [])
    texts = {
        c: [" ".join(map(str, t)) if isinstance(t, list) else t for t in ctx.train_raw[c]]
        for c in columns
    }
    n = len(texts[data.text_column])
    if cfg.max_examples and cfg.max_examples < n:
        pick = sorted(np.random.default_rng(cfg.seed).choice(n, cfg.max_examples, replace=False))
        texts = {c: [t[i] for i in pick] for c, t in texts.items()}
    tokenizer = ctx.tokenizer
    mask_token = tokenizer.mask_token or tokenizer.unk_token
    neighbours = mlm = None
    if cfg.replace > 0:
        if cfg.mlm:
            mlm = MaskedLMCandidates(check_model_ref(cfg.mlm), cfg.candidates)
            source = f"masked LM {cfg.mlm}"
        else:
            weights = ctx.load_teacher().get_input_embeddings().weight
            neighbours = EmbeddingNeighbours(tokenizer, weights, cfg.candidates)
            source = "teacher input-embedding neighbours"
        log.info(
            "augmenting %d rows x %d copies (%s)", len(texts[data.text_column]), cfg.copies, source
        )
    made = {}
    for k, c in enumerate(columns):  # the second text of a pair gets its own edits
        seeded = cfg if k == 0 else cfg.model_copy(update={"seed": cfg.seed + 7919})
        made[c] = _copies_by_row(augment_texts(texts[c], seeded, mask_token, neighbours, mlm))
    rows = [i for i in made[data.text_column] if all(i in made[c] for c in columns)]
    raw = datasets.Dataset.from_dict(
        {c: [t for i in rows for t in made[c][i][: _copies(made, columns, i)]] for c in columns}
    )
    ds = ctx.task.prepare_unlabeled(raw, tokenizer, data, ctx.teacher_config)
    info = {
        "augmented_examples": len(ds),
        "augmented_from": len(texts[data.text_column]),
        "replacements": "mlm" if mlm else ("embedding_neighbours" if neighbours else "none"),
        "examples": [" ||| ".join(raw[c][j] for c in columns) for j in range(min(5, len(raw)))],
    }
    return ds, info


def _copies_by_row(made: list[tuple[int, str]]) -> dict[int, list[str]]:
    """``augment_texts`` output grouped by source row (rows without words have none)."""
    out: dict[int, list[str]] = {}
    for i, text in made:
        out.setdefault(i, []).append(text)
    return out


def _copies(made: dict, columns: list[str], i: int) -> int:
    return min(len(made[c][i]) for c in columns)
