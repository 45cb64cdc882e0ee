"""Peak memory of static INT8 calibration with 500 vs 5,000 examples (issue: quantization).

Each size runs in its own process (so peak RSS is honest): load the data, export the reference
teacher to ONNX once (shared), then calibrate + quantize. Prints the process peak RSS and the
growth during calibration.

    .venv/bin/python benchmarks/calibration_memory.py [--method minmax|entropy|percentile]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

TEACHER = "../shared/models/minilm-l6-sst2"
TRAIN = "../shared/data/sst2/train.tsv"


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        / 1024
    )


def child(n: int, onnx_dir: str, method: str) -> None:
    from slimformer.export.ort_quantize import QuantizeConfig, quantize_onnx
    from slimformer.pipeline.context import build_context
    from slimformer.pipeline.recipe import parse_recipe

    tree = {
        "teacher": {"model": TEACHER},
        "student": {"model": TEACHER},
        "data": {
            "train": TRAIN,
            "text_column": "sentence",
            "max_train_examples": 5000,
            "max_eval_examples": 10,
        },
        "stages": [{"quantize": {"method": "static"}}],
    }
    ctx = build_context(parse_recipe(tree))  # same data loaded for both sizes
    before = rss_mb()
    cfg = QuantizeConfig(method="static", calibration=method, calibration_examples=n)
    with tempfile.TemporaryDirectory() as out:
        quantize_onnx(Path(onnx_dir), Path(out), cfg, ctx.train_ds, ctx.collate)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "examples": n,
                "rss_before_mb": round(before, 1),
                "peak_rss_mb": round(peak, 1),
                "growth_mb": round(peak - before, 1),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="minmax")
    p.add_argument("--child", type=int)
    p.add_argument("--onnx")
    args = p.parse_args()
    if args.child:
        return child(args.child, args.onnx, args.method)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slimformer.export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as onnx_dir:
        export_onnx(
            AutoModelForSequenceClassification.from_pretrained(TEACHER),
            AutoTokenizer.from_pretrained(TEACHER),
            Path(onnx_dir),
        )
        rows = []
        for n in (500, 5000):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(n),
                    "--onnx",
                    onnx_dir,
                    "--method",
                    args.method,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(
        f"peak ratio 5000/500: {rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f} "
        f"(method {args.method})"
    )


if __name__ == "__main__":
    main()
