"""The teacher's pass before training against filling the state cache batch by batch in the
first epoch (issue 3), in whole runs of the `cache-bf16` row of textbrewer_compare.py.

Both variants run the teacher once per training row and give the same cached values up to
the last bits of the bf16 sums; the pass before training runs it longest first in
~2,048-token batches. Whole runs drift by several per cent on a shared 2-core guest, so the
variants alternate (A B, B A, ...) and are compared pair by pair. Training seconds include
the pass before training.

    .venv/bin/python benchmarks/teacher_pass_ab.py --rounds 4
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402

from slimformer.pipeline import stages  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--train-examples", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/teacher-pass-ab.json")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be 1 or more, got {args.rounds}")
    torch.set_num_threads(2)
    before_training = stages.fill_state_cache
    rows = []
    for r in range(args.rounds):
        order = ["before-training", "first-epoch"]
        for variant in order if r % 2 == 0 else order[::-1]:
            stages.fill_state_cache = (
                before_training if variant == "before-training" else (lambda *a, **k: 0)
            )
            with tempfile.TemporaryDirectory() as tmp:
                row = textbrewer_compare.run_slimformer(
                    args.train_examples, 2, "cache", Path(tmp), "bf16", seed=args.seed
                )
            rows.append({**row, "variant": variant, "round": r + 1})
            print(json.dumps(rows[-1]), flush=True)
    stages.fill_state_cache = before_training
    seconds = {
        v: np.array([x["train_seconds"] for x in rows if x["variant"] == v])
        for v in ("before-training", "first-epoch")
    }
    saved = seconds["first-epoch"] - seconds["before-training"]
    from slimformer.hardware.cpu_features import cpu_name

    result = {
        "cpu": cpu_name(),
        "rows": rows,
        "saved_seconds_per_pair": saved.round(1).tolist(),
        "mean_saved_seconds": round(float(saved.mean()), 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| round | before training: pass + epochs s | in the first epoch: epochs s | saved |")
    print("|---|---|---|---|")
    for r in range(args.rounds):
        a, b = (
            next(x for x in rows if x["round"] == r + 1 and x["variant"] == v)
            for v in ("before-training", "first-epoch")
        )
        print(
            f"| {r + 1} | {a['train_seconds']} ({a['teacher_pass_seconds']} + "
            f"{' + '.join(str(e) for e in a['epoch_seconds'])}) | {b['train_seconds']} "
            f"({' + '.join(str(e) for e in b['epoch_seconds'])}) | "
            f"{b['train_seconds'] - a['train_seconds']:.1f} s |"
        )
    print(f"mean saved: {result['mean_saved_seconds']} s over {args.rounds} pairs")


if __name__ == "__main__":
    main()
