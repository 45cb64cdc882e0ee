"""Does exporting with eager attention (so ONNX Runtime fuses Attention / EmbedLayerNorm) make
ORT FP32 and dynamic INT8 faster than the SDPA export? One process, runs interleaved, the
PyTorch FP32 model as the baseline, fixed shapes (full-length rows).

    .venv/bin/python benchmarks/ort_attention_fusion.py [MODEL] [--seq 64] [--repeats 20]
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from slimformer.eval.latency import measure_latency
from slimformer.eval.variants import onnx_variant
from slimformer.export.onnx_export import export_onnx
from slimformer.export.ort_quantize import QuantizeConfig, quantize_onnx
from slimformer.hardware.cpu_features import cpu_name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="../shared/models/minilm-l6-sst2")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    runners = {"pytorch fp32 (sdpa)": (lambda f: base(**f), base.config.vocab_size)}
    with tempfile.TemporaryDirectory() as tmp:
        for attn in ("sdpa", "eager"):
            model = AutoModelForSequenceClassification.from_pretrained(
                args.model, attn_implementation=attn
            )
            fp32 = Path(tmp) / f"{attn}-fp32"
            export_onnx(model, tok, fp32)
            int8 = Path(tmp) / f"{attn}-int8"
            quantize_onnx(fp32, int8, QuantizeConfig(method="dynamic"))
            for name, folder in (
                (f"ort fp32 ({attn} export)", fp32),
                (f"ort dyn int8 ({attn} export)", int8),
            ):
                v = onnx_variant(folder)
                runners[name] = (v.run, v.vocab_size)
        with torch.inference_mode():
            result = measure_latency(runners, (1, 32), args.seq, args.repeats)
    base_ms = result["pytorch fp32 (sdpa)"]
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, seq {args.seq}")
    for name, ms in result.items():
        ratio = {k: round(base_ms[k] / v, 2) for k, v in ms.items()}
        print(json.dumps({"variant": name, "ms": ms, "speedup": ratio}))


if __name__ == "__main__":
    main()
