"""The teacher's bf16 forward over the SST-2 training rows of textbrewer_compare.py, in the
training batches (32 rows, length-grouped and shuffled) against length-sorted batches of 64 to
512 rows (issue 3): why the state cache is filled by one sorted pass before training.

    .venv/bin/python benchmarks/teacher_pass_batches.py

The forward alone (no hooks, no cache writes), twice per plan; seconds per pass over all rows.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402

from slimformer.data.batching import LengthGroupedBatchSampler  # noqa: E402
from slimformer.methods.distill.teacher_targets import (  # noqa: E402
    frozen_for_precision,
    teacher_precision,
)
from slimformer.pipeline.context import build_context  # noqa: E402
from slimformer.pipeline.recipe import parse_recipe  # noqa: E402

COLUMNS = ["input_ids", "attention_mask", "token_type_ids"]


def main() -> None:
    from transformers import AutoModelForSequenceClassification

    from slimformer.hardware.cpu_features import cpu_name

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = textbrewer_compare.recipe(8000, 2, "cache", "bf16")
        ctx = build_context(parse_recipe(recipe), tmp)
    rows = ctx.train_ds.select_columns(COLUMNS)
    rows = [rows[i] for i in range(len(rows))]
    lengths = np.array([len(r["input_ids"]) for r in rows])
    teacher = AutoModelForSequenceClassification.from_pretrained(textbrewer_compare.TEACHER)
    teacher = frozen_for_precision(teacher.eval(), "bf16")
    sampler = LengthGroupedBatchSampler(lengths, 32, seed=0)
    order = np.argsort(-lengths, kind="stable")
    plans = {"training batches (32)": list(sampler)}
    for size in (64, 128, 256, 512):
        plans[f"sorted, {size} rows"] = [
            order[i : i + size].tolist() for i in range(0, len(order), size)
        ]
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {len(rows)} rows")
    for round_ in range(2):
        for name, plan in plans.items():
            batches = [ctx.collate([rows[i] for i in b]) for b in plan]
            started = time.perf_counter()
            for b in batches:
                with torch.no_grad(), teacher_precision("bf16", torch.device("cpu")):
                    teacher(**{k: b[k] for k in COLUMNS})
            print(f"round {round_ + 1}: {name}: {time.perf_counter() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main()
