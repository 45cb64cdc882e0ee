"""``slimformer label``: the teacher writes soft labels (logits) for an unlabeled corpus, batch by
batch: into the teacher cache (keyed by teacher and tokenized corpus: a distill stage whose
training set is exactly this corpus reads them) and into
``labels.parquet`` (text, logits, predicted label, confidence, entropy, probabilities at each
requested temperature), appended per batch so a corpus larger than RAM works."""

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from slimformer.data.readers import read_unlabeled, require_columns
from slimformer.errors import OutputExistsError, RecipeError
from slimformer.methods.data_distill.selection import entropy, softmax
from slimformer.models.loading import check_model_ref, load_config, load_tokenizer
from slimformer.pipeline.context import RunContext, default_cache_dir
from slimformer.pipeline.recipe import parse_recipe
from slimformer.tasks import get_task
from slimformer.tasks.base import tokenize
from slimformer.utils.atomic import atomic_dir, write_json_atomic

log = logging.getLogger("slimformer")


def label_corpus(
    teacher: str,
    corpus: str,
    output: Path,
    text_column: str = "text",
    max_length: int = 128,
    temperatures: list[float] | None = None,
    batch_size: int = 64,
    cache_dir: str | None = None,
    overwrite: bool = False,
) -> dict:
    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputExistsError(
            f"{output} already exists; choose another --output or pass --overwrite."
        )
    if temperatures is not None and (not temperatures or min(temperatures) <= 0):
        raise RecipeError(f"temperatures must be numbers > 0, got {temperatures}.")
    recipe = parse_recipe(
        {
            "teacher": {"model": teacher},
            "data": {"train": corpus, "text_column": text_column, "max_length": max_length},
            "stages": [{"distill": {}}],
        },
        "<label>",
    )
    teacher_ref = check_model_ref(teacher)
    config = load_config(teacher_ref)
    tokenizer = load_tokenizer(teacher_ref)
    raw = read_unlabeled(corpus, text_column)
    require_columns(raw, [text_column], corpus)
    ds = tokenize(raw, tokenizer, text_column, None, max_length, keep=[])
    ctx = RunContext(
        recipe=recipe,
        task=get_task("sequence-classification"),
        tokenizer=tokenizer,
        train_ds=ds,
        eval_ds=ds,
        collate=DataCollatorWithPadding(tokenizer),
        cache_root=Path(cache_dir or default_cache_dir()),
        teacher_ref=teacher_ref,
        teacher_config=config,
    )
    targets = ctx.teacher_targets(ds)
    names = [config.id2label[i] for i in range(config.num_labels)]
    temperatures = temperatures or [1.0]
    counts = np.zeros(len(names), dtype=np.int64)
    entropy_sum = 0.0
    output = Path(output)
    with atomic_dir(output) as tmp:
        writer = None
        loader = DataLoader(ds, batch_size=batch_size, collate_fn=ctx.collate)
        for batch in tqdm(loader, desc="label", unit="batch"):
            logits = targets(batch).float().numpy()
            idx = batch["idx"].numpy()
            probs = softmax(logits.astype(np.float64))
            ent = entropy(probs)
            columns = {
                "idx": idx,
                "text": raw.select(idx.tolist())[text_column],
                "logits": [row.tolist() for row in logits],
                "label": [names[i] for i in probs.argmax(-1)],
                "confidence": probs.max(-1),
                "entropy": ent,
            }
            for t in temperatures:
                columns[f"probs_t{t:g}"] = [row.tolist() for row in softmax(logits / t)]
            table = pa.table(columns)
            writer = writer or pq.ParquetWriter(str(tmp / "labels.parquet"), table.schema)
            writer.write_table(table)
            counts += np.bincount(probs.argmax(-1), minlength=len(names))
            entropy_sum += float(ent.sum())
        if writer is not None:
            writer.close()
        targets.cache.flush()
        stats = {
            "teacher": teacher,
            "corpus": corpus,
            "examples": len(ds),
            "predicted": dict(zip(names, counts.tolist(), strict=True)),
            "mean_entropy": entropy_sum / max(len(ds), 1),
            "temperatures": temperatures,
            "teacher_forward_examples": targets.teacher_examples,
            "cached_examples": targets.cached_examples,
            "cache_dir": str(targets.cache.dir),
        }
        write_json_atomic(tmp / "label_stats.json", stats)
    log.info("labeled %d examples -> %s", len(ds), output / "labels.parquet")
    return stats
