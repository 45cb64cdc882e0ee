"""The teacher's bf16 forward over the SST-2 training rows of textbrewer_compare.py (issue 3).

Batch plans (default): the training batches (32 rows, length-grouped and shuffled) against
length-sorted batches of 64 to 512 rows; why the state cache is filled by one sorted pass
before training.

    .venv/bin/python benchmarks/teacher_pass_batches.py

Variants (``--variants``): in the pass's batches (length-sorted, 2,048 tokens, up to 128 rows),
the forward as shipped (linear weights in bf16 under bf16 autocast, layer norms and residuals
fp32, SDPA attention) against four forms that change its outputs a little: Hugging Face's eager
attention, eager with slimformer's padding of short softmax rows, batches of 4,096 tokens, and
the whole model in bf16 without autocast. Logits are compared with the shipped forward's.

    .venv/bin/python benchmarks/teacher_pass_batches.py --variants

The forward alone (no hooks, no cache writes; variants return the hidden states too), two
rounds (variants: the second in reverse order); seconds per pass over all rows.
"""

import argparse
import copy
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402

from slimformer.data.batching import LengthGroupedBatchSampler, token_budget_batches  # noqa: E402
from slimformer.methods.distill.teacher_targets import (  # noqa: E402
    frozen_for_precision,
    teacher_precision,
)
from slimformer.utils.fast_softmax import fast_cpu_softmax  # noqa: E402

COLUMNS = textbrewer_compare.TEACHER_INPUTS


def forward_seconds(
    model,
    batches: list[dict],
    autocast: bool = True,
    short_softmax: bool = False,
    hidden_states: bool = False,
) -> tuple[float, torch.Tensor]:
    """Seconds of the forward over ``batches`` and the logits (fp32), in batch order;
    ``hidden_states``: the model also returns every layer's states."""
    logits = []
    started = time.perf_counter()
    for b in batches:
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if autocast:
                stack.enter_context(teacher_precision("bf16", "cpu"))
            if short_softmax:
                stack.enter_context(fast_cpu_softmax())
            out = model(**{k: b[k] for k in COLUMNS}, output_hidden_states=hidden_states)
        logits.append(out.logits.float())
    return time.perf_counter() - started, torch.cat(logits)


def compare_plans(ctx, rows: list[dict], teacher) -> None:
    lengths = np.array([len(r["input_ids"]) for r in rows])
    sampler = LengthGroupedBatchSampler(lengths, 32, seed=0)
    order = np.argsort(-lengths, kind="stable")
    plans = {"training batches (32)": list(sampler)}
    for size in (64, 128, 256, 512):
        plans[f"sorted, {size} rows"] = [
            order[i : i + size].tolist() for i in range(0, len(order), size)
        ]
    for round_ in range(2):
        for name, plan in plans.items():
            batches = [ctx.collate([rows[i] for i in b]) for b in plan]
            seconds, _ = forward_seconds(teacher, batches)
            print(f"round {round_ + 1}: {name}: {seconds:.2f} s", flush=True)


def compare_variants(ctx, rows: list[dict], fp32, shipped) -> None:
    lengths = [len(r["input_ids"]) for r in rows]
    eager = copy.deepcopy(shipped)
    eager.set_attn_implementation("eager")
    pure = copy.deepcopy(fp32).to(torch.bfloat16)
    batches = {
        tokens: [
            ctx.collate([rows[i] for i in b]) for b in token_budget_batches(lengths, tokens, 128)
        ]
        for tokens in (2048, 4096)  # both plans keep the rows' sorted order
    }
    variants = {  # name -> (model, autocast, short softmax, tokens)
        "shipped": (shipped, True, False, 2048),
        "eager": (eager, True, False, 2048),
        "eager + short softmax": (eager, True, True, 2048),
        "4,096 tokens": (shipped, True, False, 4096),
        "pure bf16": (pure, False, False, 2048),
    }
    reference = None
    for round_ in range(2):
        for name in list(variants) if round_ == 0 else list(variants)[::-1]:
            model, autocast, short_softmax, tokens = variants[name]
            seconds, logits = forward_seconds(
                model, batches[tokens], autocast, short_softmax, hidden_states=True
            )
            if name == "shipped" and reference is None:
                reference = logits
            line = f"round {round_ + 1}: {name}: {seconds:.2f} s"
            if reference is not None and name != "shipped":
                diff = (logits - reference).abs().max().item()
                agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
                line += f" (logits vs shipped: max diff {diff:.3f}, argmax agree {agree:.4f})"
            print(line, flush=True)


def main() -> None:
    from transformers import AutoModelForSequenceClassification

    from slimformer.hardware.cpu_features import cpu_name

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", action="store_true", help="forms of the forward, not plans")
    args = p.parse_args()
    torch.set_num_threads(2)
    ctx, rows = textbrewer_compare.teacher_input_rows()
    fp32 = AutoModelForSequenceClassification.from_pretrained(textbrewer_compare.TEACHER).eval()
    shipped = frozen_for_precision(fp32, "bf16")
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {len(rows)} rows")
    if args.variants:
        compare_variants(ctx, rows, fp32, shipped)
    else:
        compare_plans(ctx, rows, shipped)


if __name__ == "__main__":
    main()
