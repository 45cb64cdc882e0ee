"""How much of the 3-layer student's training step is fixed per-op cost (issue 3).

The student of textbrewer_compare.py (the SST-2 teacher's layers 0, 3, 5, eager attention,
dropout on), forward with hidden states and backward under bf16 autocast, its word embeddings
frozen (the loop trains only the rows a run sees), inside ``keep_freed_memory`` as the loop
runs it, beside a narrow twin: the same three layers and twelve heads at width 12 (FFN 48),
randomly initialised, which runs the same ops on tensors too small to cost anything.

At a batch of 1 x 2 tokens the student's step is not free of arithmetic: autocast casts every
weight to bf16, and the backward writes weight-sized gradients and casts them back to fp32.
The twin's step at 1 x 2 is what dispatching the ops and recording autograd cost: the most
that fusing the student's layers by hand could save (fused code still runs its own ops). At
32 x 26 (the benchmark's typical batch) the student's time over that is the kernels' work.

    .venv/bin/python benchmarks/student_step_overhead.py
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402


def parse_shape(text: str) -> tuple[int, int]:
    try:
        batch, tokens = (int(x) for x in text.split("x"))
    except ValueError:
        message = f"shape {text!r} must be BATCHxTOKENS, e.g. 32x26"
        raise argparse.ArgumentTypeError(message) from None
    if batch < 1 or tokens < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} needs a batch and tokens of 1 or more")
    return batch, tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked before the model is loaded."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", default="1x2,32x26", help="BATCHxTOKENS, comma-separated")
    p.add_argument("--steps", type=int, default=30, help="timed steps a shape and round")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    try:
        args.shapes = [parse_shape(s) for s in args.shapes.split(",")]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if args.steps < 1 or args.rounds < 1:
        p.error(f"--steps and --rounds must be 1 or more, got {args.steps} and {args.rounds}")
    return args


def narrow_twin(student: torch.nn.Module) -> torch.nn.Module:
    """The student's architecture (layers, heads, activation, dropout) at width 12: the same
    ops, on tensors too small for their arithmetic or memory traffic to show."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(student.config)
    config.hidden_size, config.intermediate_size = 12, 48
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")


def main() -> None:
    from transformers import AutoModelForSequenceClassification

    from slimformer.hardware.cpu_features import cpu_name
    from slimformer.models.student import copy_layers
    from slimformer.utils.malloc import keep_freed_memory

    args = parse_args()
    torch.set_num_threads(2)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        textbrewer_compare.TEACHER, attn_implementation="eager"
    )
    student = copy_layers(teacher, [0, 3, 5]).train()
    twin = narrow_twin(student).train()
    for model in (student, twin):
        model.get_input_embeddings().weight.requires_grad_(False)
    g = torch.Generator().manual_seed(0)

    def step(model: torch.nn.Module, batch: int, tokens: int) -> None:
        ids = torch.randint(1000, 2000, (batch, tokens), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True
            )
            states = sum(h.float().pow(2).mean() for h in out.hidden_states)
            loss = out.logits.float().sum() + states
        loss.backward()
        model.zero_grad(set_to_none=True)

    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    with keep_freed_memory(True):
        for r in range(args.rounds):
            for batch, tokens in args.shapes:
                for name, model in (("student", student), ("width-12 twin", twin)):
                    for _ in range(5):  # warm-up
                        step(model, batch, tokens)
                    times = []
                    for _ in range(args.steps):
                        started = time.perf_counter()
                        step(model, batch, tokens)
                        times.append((time.perf_counter() - started) * 1000)
                    print(
                        f"round {r + 1}, {name}, batch {batch} x {tokens} tokens: forward + "
                        f"backward median {statistics.median(times):.1f} ms, "
                        f"min {min(times):.1f} ms",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
