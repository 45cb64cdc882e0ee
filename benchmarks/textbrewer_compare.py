"""Layer-wise KD side by side with TextBrewer (issue 3): same teacher, student, data, batch size,
epochs, the same batches and the same optimizer (slimformer's AdamW set-up), one after the other,
each row in a fresh Python process: what one run leaves in a process (glibc's malloc thresholds
above all) must not time the next.

Teacher ../shared/models/minilm-l6-sst2; student = its layers 0, 3, 5 (copied); SST-2 training
rows (a seeded sample of --train-examples); TinyBERT-style objective in both: hidden-state MSE at
layers 0/1/2/3 <- 0/1/4/6, attention distributions (KL / cross-entropy) at 1/2/3 <- 1/4/6,
soft-target KD at T=2 (weight 0.7) and hard-label CE (0.3), weighted so both libraries optimise
the same objective (up to constants). Both see the batches of slimformer's
length-grouped sampler (seeded, reshuffled each epoch). Throughput = training samples / training
seconds (slimformer's teacher pass before training included, evaluation excluded); accuracy
on the full dev set (872) after the last epoch.

TextBrewer runs the teacher every batch with eager attention (it needs the attention
probabilities); slimformer reads q/k through hooks (SDPA kernels), caches the teacher's logits,
and with ``teacher_states: cache`` its hidden states too, from one teacher pass before training
(length-sorted batches), whose seconds count as training time.

    .venv/bin/pip install textbrewer==0.2.1.post1 --no-deps   # once; pure Python
    .venv/bin/python benchmarks/textbrewer_compare.py --train-examples 8000 --epochs 2

Rows (``--rows``, all by default): TextBrewer as shipped, TextBrewer under slimformer's allocator
setting, slimformer with the teacher's states online / cached in fp32, and cached with the
student under bf16 autocast and the teacher's passes in bf16 (TextBrewer has no CPU mixed
precision: its ``fp16`` is NVIDIA apex, so its rows stay fp32), and that last row with torch's
own dropout (``fast_dropout: false``; by default slimformer's CPU masks are used where they time
faster). ``--rounds 2`` runs them twice, the second time in reverse order, for ratios that do
not ride on this guest's drift:

    .venv/bin/python benchmarks/textbrewer_compare.py --rows textbrewer,cache-bf16 --rounds 2

``--seeds 0,1,2`` runs one round per seed (the seed picks the training sample, the batch order
and the dropout masks in both libraries): one seed's dev accuracy moves by a few examples of
872, so accuracies are compared as means over seeds.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT.parent / "shared" / "models" / "minilm-l6-sst2"
SST2 = ROOT.parent / "shared" / "data" / "sst2"
HIDDEN_MAP = [(0, 0), (1, 1), (2, 4), (3, 6)]  # (student, teacher) hidden-state indices
ATTENTION_MAP = [(1, 1), (2, 4), (3, 6)]  # (student, teacher) layer numbers, 1-based
# alpha * T^2 / (1 - alpha) = 0.7 / 0.3 and prediction_weight * (1 - alpha) = 0.3
ALPHA = 0.7 / (0.7 + 0.3 * 4)
PREDICTION_WEIGHT = 0.3 / (1 - ALPHA)


def recipe(
    train_examples: int,
    epochs: int,
    states: str,
    precision: str = "fp32",
    seed: int = 0,
    fast_dropout: bool | str = "auto",
) -> dict:
    """``precision: bf16``: the student trains under bf16 autocast and the teacher's passes run
    under it too (the CPU's bf16 units); the weights and the optimizer stay fp32."""
    return {
        "task": "sequence-classification",
        "seed": seed,
        "teacher": {"model": str(TEACHER)},
        "student": {"layers": [0, 3, 5]},
        "data": {
            "train": str(SST2 / "train.tsv"),
            "eval": str(SST2 / "dev.tsv"),
            "text_column": "sentence",
            "max_length": 128,
            "max_train_examples": train_examples,
        },
        "stages": [
            {
                "distill": {
                    # TextBrewer's objective, term for term: 0.7 soft CE (no T^2) + 0.3 hard
                    # CE, and every matched layer summed with weight 1. slimformer's soft term
                    # carries T^2 and its layer terms average over layers, hence these weights.
                    "alpha": ALPHA,
                    "prediction_weight": PREDICTION_WEIGHT,
                    "temperature": 2.0,
                    "intermediate": {
                        "terms": {
                            "embedding_mse": 1.0,
                            "hidden_mse": float(len(ATTENTION_MAP)),
                            "attention_kl": float(len(ATTENTION_MAP)),
                        },
                        "mapping": [t for _, t in ATTENTION_MAP],
                        "teacher_states": states,
                    },
                    "epochs": epochs,
                    "batch_size": 32,
                    "learning_rate": 1e-4,
                    "warmup_ratio": 0.06,
                    "save_every": 100000,
                    "mixed_precision": "bf16" if precision == "bf16" else "no",
                    # at SST-2's ~26 tokens eager attention ran the student's step ~13% faster
                    # than sdpa on this project's 2-core AMD EPYC (same at 64 tokens)
                    "attn_implementation": "eager",
                    "teacher_precision": precision,
                    "fast_dropout": fast_dropout,
                }
            }
        ],
        "report": {"repeats": 1, "batch_sizes": [32]},
    }


TEACHER_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def teacher_input_rows(train_examples: int = 8000):
    """The benchmark's training rows as the teacher reads them (a list of dicts of its input
    columns) and the run context whose ``collate`` pads them; for the teacher-pass scripts."""
    from slimformer.pipeline.context import build_context
    from slimformer.pipeline.recipe import parse_recipe

    with tempfile.TemporaryDirectory() as tmp:
        ctx = build_context(parse_recipe(recipe(train_examples, 2, "cache", "bf16")), tmp)
    rows = ctx.train_ds.select_columns(TEACHER_INPUTS)
    return ctx, [rows[i] for i in range(len(rows))]


def run_slimformer(
    train_examples: int,
    epochs: int,
    states: str,
    work: Path,
    precision: str = "fp32",
    seed: int = 0,
    fast_dropout: bool | str = "auto",
) -> dict:
    from slimformer.api import run

    name = f"{states}-{precision}" + ("" if fast_dropout else "-torch-dropout")
    report = run(
        recipe(train_examples, epochs, states, precision, seed, fast_dropout),
        work / f"slimformer-{name}",
        cache_dir=str(work / f"cache-{name}"),  # every run starts cold: the teacher runs
    )
    stage = report["stages"][0]
    # the teacher's pass before training (cached states) counts as training time
    teacher_pass = stage.get("teacher_pass", {}).get("seconds", 0.0)
    seconds = teacher_pass + sum(stage["epoch_seconds"])
    return {
        "library": f"slimformer (teacher_states: {states}, {precision}"
        + (")" if fast_dropout else ", torch's dropout)"),
        "accuracy": report["student"]["metrics"]["accuracy"],
        "train_seconds": round(seconds, 1),
        "teacher_pass_seconds": teacher_pass,
        "epoch_seconds": stage["epoch_seconds"],
        "samples_per_s": round(train_examples * epochs / seconds, 1),
    }


class EpochSampler:
    """slimformer's batch sampler, advancing its epoch at every pass (TextBrewer never calls
    set_epoch), so both libraries see the same batches in every epoch."""

    def __init__(self, inner) -> None:
        self.inner, self.epoch = inner, 0

    def __iter__(self):
        self.inner.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def run_timed_row(train_examples: int = 8000) -> None:
    """The `cache-bf16` row once (2 epochs, seed 0) in a scratch folder, for the scripts that
    time its steps from inside (paired_step_ab.py and its kin)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_slimformer(train_examples, 2, "cache", Path(tmp), "bf16")


def paired_saving(without: list[float], with_: list[float]) -> str:
    """Paired step timings (seconds) -> 'saved X ms a step (standard error Y, N pairs)'."""
    saved = (np.array(without) - np.array(with_)) * 1000
    error = saved.std() / np.sqrt(len(saved))
    return f"saved {saved.mean():.2f} ms a step (standard error {error:.2f}, {len(saved)} pairs)"


def run_textbrewer(
    train_examples: int, epochs: int, work: Path, keep_freed_memory: bool = False, seed: int = 0
) -> dict:
    """``keep_freed_memory``: TextBrewer's training under the allocator setting slimformer's
    loop uses (not TextBrewer's default; a row to show what that setting alone is worth)."""
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from slimformer.data.batching import LengthGroupedBatchSampler
    from slimformer.eval.predict import evaluate
    from slimformer.models.student import copy_layers
    from slimformer.pipeline.context import build_context
    from slimformer.pipeline.recipe import parse_recipe
    from slimformer.train.config import TrainConfig
    from slimformer.train.loop import build_optimizer
    from slimformer.utils.malloc import keep_freed_memory as heap_setting

    ctx = build_context(
        parse_recipe(recipe(train_examples, epochs, "online", seed=seed)), str(work / "tb-cache")
    )
    kw = {"attn_implementation": "eager", "output_hidden_states": True, "output_attentions": True}
    teacher = AutoModelForSequenceClassification.from_pretrained(TEACHER, **kw).eval()
    torch.manual_seed(seed)
    student = copy_layers(teacher, [0, 3, 5])
    columns = ["input_ids", "attention_mask", "token_type_ids", "labels"]
    ds = ctx.train_ds.remove_columns([c for c in ctx.train_ds.column_names if c not in columns])
    sampler = LengthGroupedBatchSampler([len(x) for x in ds["input_ids"]], 32, seed=seed)
    # TextBrewer calls model(**batch) only for a plain dict (BatchEncoding is not one)
    loader = DataLoader(
        ds, batch_sampler=EpochSampler(sampler), collate_fn=lambda rows: dict(ctx.collate(rows))
    )

    def adaptor(batch, outputs):
        # attention probabilities as logits (log p): softmax(log p) = p, so attention_ce is the
        # cross-entropy between the two distributions (KL up to the teacher's entropy)
        return {
            "logits": outputs.logits,
            "hidden": outputs.hidden_states,
            "attention": [a.clamp_min(1e-12).log() for a in outputs.attentions],
            "inputs_mask": batch["attention_mask"],
            "losses": outputs.loss,
        }

    matches = [
        {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
        for s, t in HIDDEN_MAP
    ] + [
        {
            "layer_T": t - 1,
            "layer_S": s - 1,
            "feature": "attention",
            "loss": "attention_ce",
            "weight": 1,
        }
        for s, t in ATTENTION_MAP
    ]
    d_config = DistillationConfig(
        temperature=2.0,
        kd_loss_type="ce",
        kd_loss_weight=0.7,
        hard_label_weight=0.3,
        intermediate_matches=matches,
    )
    t_config = TrainingConfig(
        device="cpu", output_dir=str(work / "tb-out"), log_dir=str(work / "tb-log")
    )
    steps = len(loader) * epochs
    # slimformer's optimizer, built the same way: AdamW (fused), lr 1e-4, weight decay 0.01
    # except on biases and norms
    optimizer = build_optimizer([student], TrainConfig(learning_rate=1e-4))
    distiller = GeneralDistiller(t_config, d_config, teacher, student, adaptor, adaptor)
    started = time.perf_counter()
    with distiller, heap_setting(keep_freed_memory):
        distiller.train(
            optimizer,
            loader,
            num_epochs=epochs,
            scheduler_class=get_linear_schedule_with_warmup,
            scheduler_args={"num_warmup_steps": int(0.06 * steps), "num_training_steps": steps},
            max_grad_norm=1.0,
        )
    seconds = time.perf_counter() - started
    student.config.output_hidden_states = student.config.output_attentions = False
    metrics = evaluate(student.eval(), ctx.task, ctx.eval_ds, ctx.collate, None)
    return {
        "library": f"textbrewer {textbrewer.__version__}"
        + (" (slimformer's allocator setting)" if keep_freed_memory else ""),
        "accuracy": metrics["accuracy"],
        "train_seconds": round(seconds, 1),
        "samples_per_s": round(train_examples * epochs / seconds, 1),
    }


ROWS = {  # name -> (train_examples, epochs, work, seed) -> row
    "textbrewer": lambda n, e, w, s: run_textbrewer(n, e, w, seed=s),
    "textbrewer-heap": lambda n, e, w, s: run_textbrewer(n, e, w, keep_freed_memory=True, seed=s),
    "online-fp32": lambda n, e, w, s: run_slimformer(n, e, "online", w, seed=s),
    "online-bf16": lambda n, e, w, s: run_slimformer(n, e, "online", w, "bf16", seed=s),
    "cache-fp32": lambda n, e, w, s: run_slimformer(n, e, "cache", w, seed=s),
    "cache-bf16": lambda n, e, w, s: run_slimformer(n, e, "cache", w, "bf16", seed=s),
    "cache-bf16-torch-dropout": lambda n, e, w, s: run_slimformer(
        n, e, "cache", w, "bf16", seed=s, fast_dropout=False
    ),
}


def run_row_isolated(
    name: str, train_examples: int, epochs: int, work: Path, seed: int, threads: int
) -> dict:
    """One row in a fresh interpreter. A row run after another in the same process inherits
    its state: after slimformer's training block, glibc's malloc used to mmap every block
    over 128 KB (TextBrewer's run then took 10-17% longer), and oneDNN's kernel caches and
    torch's thread pool are warm or not depending on the row before."""
    out = work / f"{name}-row.json"
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            *("--run-row", name, "--seeds", str(seed), "--threads", str(threads)),
            *("--train-examples", str(train_examples), "--epochs", str(epochs)),
            *("--work", str(work), "--out", str(out)),
        ],
        check=True,
    )
    return json.loads(out.read_text())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked before any model is loaded."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--train-examples", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="runs/textbrewer-compare.json")
    p.add_argument(
        "--rows",
        default=",".join(ROWS),
        help="comma-separated rows, first = the baseline of the ratios: " + ", ".join(ROWS),
    )
    p.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds; every round runs once per seed (accuracy is compared as "
        "the mean over seeds)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the rows this many times, every other round in reverse order (A B, B A, ...): "
        "this guest's speed drifts, so ratios are taken within a round",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch's intra-op threads for both libraries (this project's machine has 2 cores)",
    )
    # the child process of run_row_isolated: one row, its result to --out
    p.add_argument("--run-row", choices=list(ROWS), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [n for n in args.rows.split(",") if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    if args.rounds < 1:
        p.error(f"--rounds must be 1 or more, got {args.rounds}")
    if args.threads < 1:
        p.error(f"--threads must be 1 or more, got {args.threads}")
    try:
        args.seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    return args


def main() -> None:
    args = parse_args()
    names = args.rows.split(",")
    torch.set_num_threads(args.threads)
    if args.run_row:
        row = ROWS[args.run_row](args.train_examples, args.epochs, Path(args.work), args.seeds[0])
        Path(args.out).write_text(json.dumps(row))
        return
    from slimformer.hardware.cpu_features import cpu_name

    rows = []
    rounds = [seed for _ in range(args.rounds) for seed in args.seeds]
    for r, seed in enumerate(rounds):
        order = names if r % 2 == 0 else names[::-1]
        with tempfile.TemporaryDirectory() as tmp:  # every row starts cold: the teacher runs
            done = {
                n: run_row_isolated(
                    n, args.train_examples, args.epochs, Path(tmp), seed, args.threads
                )
                for n in order
            }
        base = done[names[0]]["samples_per_s"]
        for n in names:
            done[n].update(round=r + 1, seed=seed)
            done[n]["throughput_vs_textbrewer"] = round(done[n]["samples_per_s"] / base, 2)
            rows.append(done[n])
    by_library: dict[str, list[dict]] = {}
    for row in rows:
        by_library.setdefault(row["library"], []).append(row)
    means = {
        library: {
            "accuracy": round(float(np.mean([x["accuracy"] for x in group])), 4),
            "throughput_vs_textbrewer": round(
                float(np.mean([x["throughput_vs_textbrewer"] for x in group])), 2
            ),
        }
        for library, group in by_library.items()
    }
    result = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "args": vars(args),
        "rows": rows,
        "means": means,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(
        "\n| round | seed | library | dev accuracy | train s | samples/s | vs first row |\n"
        "|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['round']} | {r['seed']} | {r['library']} | {r['accuracy']:.4f} | "
            f"{r['train_seconds']} | {r['samples_per_s']} | {r['throughput_vs_textbrewer']}x |"
        )
    for library, m in means.items():
        print(
            f"mean over {len(rounds)} rounds: {library}: accuracy {m['accuracy']:.4f}, "
            f"{m['throughput_vs_textbrewer']}x"
        )


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
