"""The ``qat:`` stage: quantization-aware training to an INT8 ONNX model.

1. export the input model (parity-checked) and find the Linears / embeddings that static INT8
   quantizes; calibrate their input ranges (MinMax) on ``calibration_examples`` training rows;
2. post-training baseline: INT8 ONNX with those ranges and the weights as they are;
3. train with the INT8 rounding simulated (KD from the teacher), ranges fixed;
4. INT8 ONNX of the kept weights with the same ranges; the report shows fp32, PTQ and QAT
   metrics side by side, and how closely the simulation predicted the ONNX model.
"""

import json
import logging
from pathlib import Path

from torch.utils.data import DataLoader

from slimformer.eval.predict import labels_of, predict
from slimformer.eval.variants import onnx_variant
from slimformer.export.parity import parity
from slimformer.export.qat_onnx import int8_with_ranges, quantizable_sites
from slimformer.methods.quantize.fake_quant import (
    ActivationRanges,
    calibrate_ranges,
    fake_quantized,
)
from slimformer.pipeline.context import RunContext, teacher_eval_values
from slimformer.pipeline.recipe import ExportStage, QatStage
from slimformer.pipeline.stages import (
    STAGES,
    _onnx_mb,
    _train,
    export_stage,
    kd_loss,
    mark_int8,
    train_summary,
    trainable_model,
)
from slimformer.utils.atomic import write_json_atomic

log = logging.getLogger("slimformer")
RANGES_FILE = "activation_ranges.json"


def _ranges(ctx: RunContext, cfg: QatStage, model, names: list[str], stage_dir: Path):
    """Calibrated once and kept in the stage folder, so --resume trains with the same ranges."""
    path = stage_dir / RANGES_FILE
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        return ActivationRanges({k: tuple(v) for k, v in saved.items()})
    rows = ctx.train_ds.select(range(min(cfg.calibration_examples, len(ctx.train_ds))))
    batches = DataLoader(rows, batch_size=cfg.calibration_batch_size, collate_fn=ctx.collate)
    ranges = calibrate_ranges(model, names, batches, ctx.task.forward)
    write_json_atomic(path, {k: list(v) for k, v in ranges.ranges.items()})
    return ranges


def _onnx_metrics(ctx: RunContext, folder: Path) -> tuple[dict, object]:
    values = onnx_variant(folder, task=ctx.task).predict(ctx.eval_ds, ctx.collate)
    return ctx.task.metrics(values, labels_of(ctx.eval_ds), None), values


@STAGES.register("qat")
def qat_stage(
    ctx: RunContext, cfg: QatStage, model_dir: Path | None, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    model = trainable_model(ctx, model_dir)
    export = ExportStage(opset=cfg.opset)
    fp32_dir, export_info = export_stage(ctx, export, model_dir, stage_dir / "fp32", resume)
    sites = quantizable_sites(fp32_dir, model)
    linears, tables = list(sites.linears), list(sites.embeddings)
    ranges = _ranges(ctx, cfg, model, linears, stage_dir)
    log.info(
        "QAT: %d Linears and %d embedding tables quantized, ranges from %d training rows",
        len(linears),
        len(tables),
        min(cfg.calibration_examples, len(ctx.train_ds)),
    )
    int8_with_ranges(fp32_dir, model, stage_dir / "ptq", ranges, cfg.per_channel)
    mark_int8(stage_dir / "ptq", "ort-static")
    fp32_metrics, _ = _onnx_metrics(ctx, fp32_dir)
    ptq_metrics, _ = _onnx_metrics(ctx, stage_dir / "ptq")
    log.info("post-training INT8 (same ranges): %s (fp32 %s)", ptq_metrics, fp32_metrics)

    targets = ctx.teacher_targets(ctx.train_ds)
    loss_fn, _ = kd_loss(ctx, cfg, model, targets)
    with fake_quantized(model, linears, tables, ranges, cfg.per_channel):
        result = _train(
            ctx,
            cfg,
            model,
            loss_fn,
            stage_dir,
            resume,
            teacher_eval_values(ctx),
            ctx.primary_metric,
            "qat",
        )
    if targets.cache is not None:
        targets.cache.flush()

    trained = ctx.task.load_model(str(result.model_dir))
    qat_fp32, _ = export_stage(ctx, export, result.model_dir, stage_dir / "qat-fp32", resume)
    out = stage_dir / "model"
    int8_with_ranges(qat_fp32, trained, out, ranges, cfg.per_channel)
    mark_int8(out, "ort-static-qat")
    qat_metrics, int8_values = _onnx_metrics(ctx, out)
    with fake_quantized(trained, linears, tables, ranges, cfg.per_channel):
        simulated = predict(trained, ctx.task, ctx.eval_ds, ctx.collate)
    metric = ctx.primary_metric
    drop = {
        "ptq": round(100 * (fp32_metrics[metric] - ptq_metrics[metric]), 3),
        "qat": round(100 * (fp32_metrics[metric] - qat_metrics[metric]), 3),
    }
    log.info("QAT INT8: %s; %s drop in points vs fp32: %s", qat_metrics, metric, drop)
    return out, {
        **train_summary(result),
        "export": export_info,
        "fp32_metrics": fp32_metrics,
        "ptq_metrics": ptq_metrics,
        "int8_metrics": qat_metrics,
        "drop_points": drop,
        "simulated_vs_onnx": parity(simulated, int8_values, ctx.task.classes_per_position),
        "quantized": {"linears": len(linears), "embedding_tables": len(tables)},
        "calibration_examples": min(cfg.calibration_examples, len(ctx.train_ds)),
        "per_channel": cfg.per_channel,
        "size_mb": {"fp32": round(_onnx_mb(fp32_dir), 3), "int8": round(_onnx_mb(out), 3)},
    }
