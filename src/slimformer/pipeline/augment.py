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
    data = ctx.recipe.data
    if data.text_pair_column:
        raise RecipeError(
            "augment works on single-sentence data; this recipe has text pairs "
            f"(data.text_pair_column: {data.text_pair_column})."
        )
    if not hasattr(ctx.task, "prepare_unlabeled"):
        raise RecipeError(f"augment is not supported for the {ctx.task.name} task.")
    # token-classification rows hold word lists: augmented as space-joined sentences
    texts = [
        " ".join(map(str, t)) if isinstance(t, list) else t for t in ctx.train_raw[data.text_column]
    ]
    if cfg.max_examples and cfg.max_examples < len(texts):
        pick = np.random.default_rng(cfg.seed).choice(len(texts), cfg.max_examples, replace=False)
        texts = [texts[i] for i in sorted(pick)]
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
        log.info("augmenting %d sentences x %d copies (%s)", len(texts), cfg.copies, source)
    made = augment_texts(texts, cfg, mask_token, neighbours, mlm)
    raw = datasets.Dataset.from_dict({data.text_column: [t for _, t in made]})
    ds = ctx.task.prepare_unlabeled(raw, tokenizer, data, ctx.teacher_config)
    info = {
        "augmented_examples": len(ds),
        "augmented_from": len(texts),
        "replacements": "mlm" if mlm else ("embedding_neighbours" if neighbours else "none"),
        "examples": [t for _, t in made[:5]],
    }
    return ds, info
