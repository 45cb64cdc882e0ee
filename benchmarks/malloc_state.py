"""How fast a workload runs in each glibc malloc state a slimformer process can be in (issue 3).

slimformer's training loop keeps freed memory in the heap (``keep_freed_memory``,
slimformer/utils/malloc.py) by setting glibc's mallopt parameters. Any such call switches
glibc's dynamic mmap threshold off for good. Until 2026-12-07 the block ended on glibc's static
defaults, so for the rest of the process every block over 128 KB was mmapped and faulted in
again: textbrewer_compare.py then timed every row after the first slimformer row in that state.
Each state here runs in a fresh interpreter, the states alternating from round to round:

  fresh         glibc as a process starts (dynamic threshold)
  static-128k   what the block used to leave behind (mmap threshold 128 KB, trim 128 KB)
  in-block      inside keep_freed_memory (no mmap, trim above 1 GiB)
  after-block   after keep_freed_memory, as it ends now (glibc's settled 32 MB / 64 MB)

    .venv/bin/python benchmarks/malloc_state.py
    .venv/bin/python benchmarks/malloc_state.py --workload textbrewer --states fresh,static-128k

Workloads: ``teacher-forward`` (default), the SST-2 teacher's forward over 128 x 16 tokens
without gradients, in bf16 autocast and in fp32 (ms per forward, 20 after 3 warm-up);
``textbrewer``, TextBrewer's row of textbrewer_compare.py (seed 0, 8,000 rows, 2 epochs; its
training seconds).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402

from slimformer.utils import malloc  # noqa: E402

STATES = ("fresh", "static-128k", "in-block", "after-block")
WORKLOADS = ("teacher-forward", "textbrewer")


def enter_state(state: str, stack: ExitStack) -> None:
    if state == "static-128k":  # the block's old exit: glibc's static defaults
        libc = malloc._glibc()
        if libc is None:
            raise SystemExit("malloc_state.py needs glibc (the states are glibc's)")
        libc.mallopt(malloc.M_TRIM_THRESHOLD, 128 * 1024)
        libc.mallopt(malloc.M_MMAP_MAX, malloc.DEFAULT_MMAP_MAX)
    elif state == "in-block":
        stack.enter_context(malloc.keep_freed_memory(True))
    elif state == "after-block":
        with malloc.keep_freed_memory(True):
            pass


def teacher_forward_ms() -> dict:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        textbrewer_compare.TEACHER, attn_implementation="eager"
    ).eval()
    ids = torch.randint(1000, 2000, (128, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    def ms(bf16: bool, n: int = 20) -> float:
        def forward():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(input_ids=ids, attention_mask=mask)

        for _ in range(3):
            forward()
        started = time.perf_counter()
        for _ in range(n):
            forward()
        return round((time.perf_counter() - started) / n * 1000, 1)

    return {"bf16_ms": ms(True), "fp32_ms": ms(False)}


def textbrewer_seconds() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        row = textbrewer_compare.ROWS["textbrewer"](8000, 2, Path(tmp), 0)
    return {"train_seconds": row["train_seconds"]}


def child(state: str, workload: str) -> None:
    torch.set_num_threads(2)
    with ExitStack() as stack:
        enter_state(state, stack)
        result = teacher_forward_ms() if workload == "teacher-forward" else textbrewer_seconds()
    print("RESULT " + json.dumps({"state": state, **result}), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked before any interpreter is started."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workload", choices=WORKLOADS, default="teacher-forward")
    p.add_argument("--states", default=",".join(STATES))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", choices=STATES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.states = args.states.split(",")
    unknown = [s for s in args.states if s not in STATES]
    if unknown:
        p.error(f"unknown states {unknown}; known: {', '.join(STATES)}")
    if args.rounds < 1:
        p.error(f"--rounds must be 1 or more, got {args.rounds}")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child, args.workload)
        return
    states = args.states
    for r in range(args.rounds):
        for state in states if r % 2 == 0 else states[::-1]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", state, "--workload", args.workload],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            line = next(x for x in out.splitlines() if x.startswith("RESULT "))
            print(f"round {r + 1}: {line[len('RESULT ') :]}", flush=True)


if __name__ == "__main__":
    main()
