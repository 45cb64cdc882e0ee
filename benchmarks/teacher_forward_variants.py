"""The teacher's forward over the SST-2 training rows of textbrewer_compare.py in the teacher
pass's batches (length-sorted, 2,048 tokens, up to 128 rows), as shipped and in four variants
that would change its outputs a little (issue 3): are any worth it?

    .venv/bin/python benchmarks/teacher_forward_variants.py

shipped: linear weights in bf16 under bf16 autocast (layer norms and residuals fp32), SDPA
attention. eager: Hugging Face's eager attention. eager + short softmax: with slimformer's
padding of short softmax rows. 4,096 tokens: batches twice as large. pure bf16: the whole
model in bf16, no autocast. The forward alone (hidden states returned, no hooks, no cache
writes), two rounds in alternating order; logits compared with the shipped forward's.
"""

import copy
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402

from slimformer.data.batching import token_budget_batches  # noqa: E402
from slimformer.methods.distill.teacher_targets import (  # noqa: E402
    frozen_for_precision,
    teacher_precision,
)
from slimformer.pipeline.context import build_context  # noqa: E402
from slimformer.pipeline.recipe import parse_recipe  # noqa: E402
from slimformer.utils.fast_softmax import fast_cpu_softmax  # noqa: E402

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
    lengths = [len(r["input_ids"]) for r in rows]
    fp32 = AutoModelForSequenceClassification.from_pretrained(textbrewer_compare.TEACHER).eval()
    shipped = frozen_for_precision(fp32, "bf16")
    eager = copy.deepcopy(shipped)
    eager.set_attn_implementation("eager")
    pure = copy.deepcopy(fp32).to(torch.bfloat16)

    def plan(tokens: int) -> list[dict]:
        return [
            ctx.collate([rows[i] for i in b]) for b in token_budget_batches(lengths, tokens, 128)
        ]

    batches = {2048: plan(2048), 4096: plan(4096)}
    # name -> (model, autocast, short softmax, tokens)
    variants = {
        "shipped": (shipped, True, False, 2048),
        "eager": (eager, True, False, 2048),
        "eager + short softmax": (eager, True, True, 2048),
        "4,096 tokens": (shipped, True, False, 4096),
        "pure bf16": (pure, False, False, 2048),
    }

    def run(name: str) -> tuple[float, torch.Tensor]:
        model, autocast, short_softmax, tokens = variants[name]
        logits = []
        started = time.perf_counter()
        for b in batches[tokens]:
            with ExitStack() as stack:
                stack.enter_context(torch.no_grad())
                if autocast:
                    stack.enter_context(teacher_precision("bf16", "cpu"))
                if short_softmax:
                    stack.enter_context(fast_cpu_softmax())
                out = model(**{k: b[k] for k in COLUMNS}, output_hidden_states=True)
            logits.append(out.logits.float())
        return time.perf_counter() - started, torch.cat(logits)

    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {len(rows)} rows")
    reference = None
    for round_ in range(2):
        names = list(variants) if round_ == 0 else list(variants)[::-1]
        for name in names:
            seconds, logits = run(name)
            if name == "shipped" and reference is None:
                reference = logits
            line = f"round {round_ + 1}: {name}: {seconds:.2f} s"
            if reference is not None and name != "shipped":
                diff = (logits - reference).abs().max().item()
                agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
                line += f" (logits vs shipped: max diff {diff:.3f}, argmax agree {agree:.4f})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
