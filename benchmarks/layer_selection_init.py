"""Perplexity of depth-pruned students straight after the copy (no training), for each
``student.layer_selection`` rule: which rule gives distillation the best starting point.

    python benchmarks/layer_selection_init.py recipes/smollm2-distill.yaml \
        --rules block_influence angular greedy_kl --set data.eval_max_tokens=8192
"""

import argparse
import json
import time

import torch

from slimformer.eval.predict import labels_of, predict
from slimformer.pipeline.context import build_context
from slimformer.pipeline.recipe import load_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--rules", nargs="+", default=["block_influence", "angular", "greedy_kl"])
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--output", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    for rule in args.rules:
        recipe = load_recipe(args.recipe, [*args.overrides, f"student.layer_selection={rule}"])
        ctx = build_context(recipe)
        start = time.perf_counter()
        with torch.random.fork_rng():
            student = ctx.initial_student().eval()
        chose_s = time.perf_counter() - start
        values = predict(student, ctx.task, ctx.eval_ds, ctx.collate, batch_size=8)
        metrics = ctx.task.metrics(values, labels_of(ctx.eval_ds), None)
        row = {
            "rule": rule,
            "layers": ctx.student_info.get("teacher_layers"),
            "selection_s": round(chose_s, 1),
            "perplexity": round(metrics["perplexity"], 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
