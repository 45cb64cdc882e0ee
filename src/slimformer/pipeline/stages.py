"""Recipe stages: each takes the current model and returns the folder of the model it trained.
A new stage kind = one function + one ``@STAGES.register``."""

import logging
import time
from collections.abc import Callable
from pathlib import Path

from transformers import PreTrainedModel

from slimformer.errors import RecipeError
from slimformer.eval.predict import evaluate, labels_of, predict
from slimformer.eval.variants import is_onnx_folder, onnx_variant
from slimformer.export.onnx_export import export_onnx
from slimformer.export.ort_quantize import QuantizeConfig, quantize_onnx
from slimformer.export.parity import check_parity, parity
from slimformer.export.torch_runtime import RuntimeSpec, write_runtime_spec
from slimformer.methods.distill.layerwise.distiller import LayerwiseDistiller
from slimformer.methods.distill.layerwise.teacher_pass import fill_state_cache
from slimformer.methods.distill.objective import DistillLossConfig, KDLoss, make_loss_fn
from slimformer.models.freeze import freeze_embeddings, freeze_encoder
from slimformer.models.lora import add_lora, merged_from
from slimformer.optimize.config import OptimizeConfig
from slimformer.optimize.optimizer import copy_choice, optimize_model
from slimformer.pipeline.context import RunContext, teacher_eval_values
from slimformer.pipeline.data_distill import choose_training_data, training_rows
from slimformer.pipeline.recipe import (
    DistillStage,
    ExportStage,
    FinetuneStage,
    OptimizeStage,
    QuantizeStage,
)
from slimformer.registry import Registry
from slimformer.tasks.sequence_classification import is_regression
from slimformer.train.config import TrainConfig
from slimformer.train.loop import TrainResult, train
from slimformer.train.processes import processes
from slimformer.utils.atomic import atomic_dir

log = logging.getLogger("slimformer")
StageFn = Callable[..., tuple[Path, dict]]
STAGES: Registry[StageFn] = Registry("stage")


def trainable_model(ctx: RunContext, model_dir: Path | None) -> PreTrainedModel:
    """The stage's input as a PyTorch model: the recipe's student, or the last stage's output."""
    if model_dir is None:
        return ctx.initial_student()
    if is_onnx_folder(model_dir):
        raise RecipeError(
            f"Stage input {model_dir} is an ONNX model, which cannot be trained. Put training "
            f"stages (distill, finetune) before export/quantize stages in the recipe."
        )
    return ctx.task.load_model(str(model_dir))


def train_config_of(cfg: TrainConfig) -> TrainConfig:
    return TrainConfig(**{k: getattr(cfg, k) for k in TrainConfig.model_fields})


def train_summary(result: TrainResult) -> dict:
    return {
        "steps": result.steps,
        "epoch_seconds": [round(s, 2) for s in result.epoch_seconds],
        "best": result.best,
        "evals": result.evals,
        "resumed_from_step": result.resumed_from,
        **({"lora": result.lora} if result.lora else {}),
    }


def _train(
    ctx: RunContext,
    cfg: TrainConfig,
    model: PreTrainedModel,
    loss_fn,
    stage_dir: Path,
    resume: bool,
    reference,
    primary_metric: str,
    desc: str,
    train_ds=None,
    batch_sampler=None,
) -> TrainResult:
    """The shared loop call of the training stages (evaluated on the eval set, best kept by
    ``cfg.best_metric`` or else ``primary_metric``)."""
    if cfg.freeze_encoder:
        counts = freeze_encoder(model)
        log.info(
            "encoder frozen: %d parameters train (the head), %d frozen",
            counts["trainable_params"],
            counts["frozen_params"],
        )
    if cfg.freeze_embeddings:
        log.info("token embeddings frozen: %d parameters", freeze_embeddings(model))
    lora = ctx.recipe.student.lora
    if lora is not None:
        model, lora_info = add_lora(model, lora)
        log.info("LoRA adapters: %s", lora_info)
    metric = cfg.best_metric or primary_metric
    result = train(
        model,
        ctx.train_ds if train_ds is None else train_ds,
        ctx.collate,
        loss_fn,
        train_config_of(cfg),
        stage_dir,
        ctx.recipe.seed,
        evaluate=_eval_fn(ctx, reference),
        primary_metric=metric,
        resume=resume,
        tokenizer=ctx.tokenizer,
        desc=desc,
        batch_sampler=batch_sampler,
        lower_is_better=metric in ctx.task.lower_is_better,
        keep_autocast_outputs=ctx.task.keeps_autocast_outputs,
    )
    if lora is not None:  # the kept adapters merged into a plain model folder
        merged = Path(stage_dir) / "merged"
        with atomic_dir(merged) as tmp:
            merged_from(model, result.model_dir).save_pretrained(tmp, safe_serialization=True)
            ctx.tokenizer.save_pretrained(tmp)
        result.model_dir, result.lora = merged, lora_info
    return result


def _eval_fn(ctx: RunContext, reference):
    return lambda model: evaluate(model, ctx.task, ctx.eval_ds, ctx.collate, reference)


def kd_loss(
    ctx: RunContext, cfg, model: PreTrainedModel, targets, rows=None
) -> tuple[KDLoss, dict]:
    """The stage's KD loss; with ``intermediate``, the layer-wise terms too (mapping checked
    and logged here, before training starts). ``rows``: the training rows (state cache key)."""
    loss_cfg = DistillLossConfig(**{k: getattr(cfg, k) for k in DistillLossConfig.model_fields})
    precision = getattr(cfg, "teacher_precision", "fp32")
    layerwise, info = None, {}
    if loss_cfg.intermediate is not None:
        inter = loss_cfg.intermediate
        state_cache = None
        if inter.teacher_states == "cache":
            state_cache = ctx.teacher_state_cache_opener(
                ctx.train_ds if rows is None else rows, precision
            )
        layerwise = LayerwiseDistiller(
            inter,
            model,
            ctx.load_teacher,
            ctx.task.forward,
            ctx.recipe.seed,
            state_cache,
            precision,
        )
        info = layerwise.describe()
        if layerwise.state_cache is not None:
            info["teacher_state_cache"] = {
                "dir": str(layerwise.state_cache.dir),
                "size_gb": round(layerwise.state_cache.size_gb, 3),
            }
        log.info(
            "layer-wise KD, student -> teacher layers: %s; terms %s",
            ", ".join(f"{s}->{t}" for s, t in layerwise.mapping.items()),
            info["terms"],
        )
    return make_loss_fn(ctx.task, loss_cfg, targets, layerwise), info


@STAGES.register("distill")
def distill_stage(
    ctx: RunContext, cfg: DistillStage, model_dir: Path | None, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    model = trainable_model(ctx, model_dir)
    rows, n_unlabeled, rows_info = training_rows(ctx, cfg)
    lm_info: dict = {}
    if ctx.task.name == "causal-lm":
        targets, lm_info = lm_teacher_targets(ctx, cfg, rows)
    else:
        targets = ctx.teacher_targets(rows, precision=cfg.teacher_precision)
    if targets.cache is not None:
        log.info(
            "teacher cache %s: %d/%d training examples already cached",
            targets.cache.dir,
            targets.cache.filled_count,
            len(rows),
        )
    loss_fn, layerwise_info = kd_loss(ctx, cfg, model, targets, rows)
    reference = teacher_eval_values(ctx)
    train_ds, sampler, data_info = choose_training_data(
        ctx, cfg, targets, stage_dir, rows, n_unlabeled
    )
    teacher_pass: dict = {}
    state = processes()
    # cached states, one process: the teacher runs on them all up front (several processes
    # fill the cache from their own training batches)
    if loss_fn.layerwise is not None and state.num_processes == 1:
        started = time.perf_counter()
        filled = fill_state_cache(loss_fn.layerwise, train_ds, ctx.collate, state.device)
        if filled:
            seconds = round(time.perf_counter() - started, 2)
            teacher_pass = {"teacher_pass": {"rows": filled, "seconds": seconds}}
    result = _train(
        ctx,
        cfg,
        model,
        loss_fn,
        stage_dir,
        resume,
        reference,
        ctx.primary_metric,
        "distill",
        train_ds,
        sampler,
    )
    if targets.cache is not None:
        targets.cache.flush()
    if loss_fn.layerwise is not None:
        loss_fn.layerwise.close()  # the hooks on the (shared) teacher go with the stage
    log.info(
        "teacher forward passes during training: %d examples (%d served from cache)",
        targets.teacher_examples,
        targets.cached_examples,
    )
    return result.model_dir, {
        **train_summary(result),
        "teacher_forward_examples": targets.teacher_examples,
        "cached_examples": targets.cached_examples,
        "cache_dir": str(targets.cache.dir) if targets.cache is not None else None,
        "teacher_precision": cfg.teacher_precision,
        **lm_info,
        **rows_info,
        **data_info,
        **({"intermediate": layerwise_info} if layerwise_info else {}),
        **teacher_pass,
        **({"encoder_frozen": True} if cfg.freeze_encoder else {}),
    }


def lm_teacher_targets(ctx: RunContext, cfg: DistillStage, rows) -> tuple[object, dict]:
    """Causal-LM teacher distributions: top-k cached (filled now, before training, so its
    cost shows on its own) or online."""
    from slimformer.methods.distill.lm_targets import LMTeacherTargets
    from slimformer.methods.distill.teacher_cache import dataset_fingerprint
    from slimformer.methods.distill.topk_cache import TopKCache, check_top_k
    from slimformer.tasks.base import MODEL_INPUTS

    state = processes()
    vocab = int(ctx.teacher_config.vocab_size)
    cache = None
    if cfg.teacher_logits == "topk":
        check_top_k(cfg.top_k, vocab)
        positions = len(rows[0]["input_ids"]) - 1
        data_fp = dataset_fingerprint(rows, MODEL_INPUTS, extra=cfg.teacher_precision)
        with state.main_process_first():  # the main process creates the files
            cache = TopKCache(
                ctx.cache_root / "teacher_topk",
                ctx.teacher_fingerprint(),
                data_fp,
                len(rows),
                positions,
                cfg.top_k,
            )
    targets = LMTeacherTargets(ctx.task, ctx.load_teacher, cache, vocab, cfg.teacher_precision)
    info = {"teacher_logits": targets.mode, "teacher_precision": cfg.teacher_precision}
    if cache is not None:
        started = time.perf_counter()
        cached_before = cache.filled_count
        # each process labels its share of the blocks (shared memory map), then all read all
        targets.fill_all(
            rows, ctx.collate, cfg.batch_size, state.process_index, state.num_processes
        )
        state.wait_for_everyone()
        info["topk_cache"] = {
            "dir": str(cache.dir),
            "size_gb": round(cache.size_gb, 3),
            "blocks_cached_before": cached_before,
            "fill_seconds": round(time.perf_counter() - started, 2),
        }
        log.info("teacher top-k cache ready: %s", info["topk_cache"])
    return targets, info


@STAGES.register("finetune")
def finetune_stage(
    ctx: RunContext, cfg: FinetuneStage, model_dir: Path | None, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    model = trainable_model(ctx, model_dir)
    regression = ctx.task.name == "sequence-classification" and is_regression(model.config)
    hard = cfg.hard or ("mse" if regression else "ce")
    loss_fn = make_loss_fn(ctx.task, DistillLossConfig(alpha=0.0, hard=hard), None)
    result = _train(
        ctx, cfg, model, loss_fn, stage_dir, resume, None, ctx.primary_metric, "finetune"
    )
    return result.model_dir, train_summary(result)


@STAGES.register("export")
def export_stage(
    ctx: RunContext, cfg: ExportStage, model_dir: Path | None, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    model = trainable_model(ctx, model_dir)
    out = stage_dir / "model"
    with atomic_dir(out) as tmp:
        export_onnx(model, ctx.tokenizer, tmp, opset=cfg.opset, optimize=cfg.optimize)
        result = check_parity(
            predict(model, ctx.task, ctx.eval_ds, ctx.collate),
            onnx_variant(tmp, task=ctx.task).predict(ctx.eval_ds, ctx.collate),
            cfg.parity_max_abs_diff,
            cfg.parity_min_agreement,
            classes=ctx.task.classes_per_position,
        )
    log.info("ONNX parity on %d eval examples: %s", len(ctx.eval_ds), result)
    return out, {"parity": result, "opset": cfg.opset}


@STAGES.register("quantize")
def quantize_stage(
    ctx: RunContext, cfg: QuantizeStage, model_dir: Path | None, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    info: dict = {}
    source = model_dir
    if source is None and ctx.recipe.student.model and is_onnx_folder(ctx.recipe.student.model):
        source = Path(ctx.recipe.student.model)  # an already exported model
    if source is None or not is_onnx_folder(source):  # export the PyTorch model first
        source, export_info = export_stage(
            ctx, ExportStage(opset=cfg.opset), model_dir, stage_dir / "fp32", resume
        )
        info["export"] = export_info
    out = stage_dir / "model"
    quant_cfg = QuantizeConfig(**{k: getattr(cfg, k) for k in QuantizeConfig.model_fields})
    cache = stage_dir / "calibration_ranges.json" if quant_cfg.method == "static" else None
    if quant_cfg.sensitivity is not None:
        extra, info["sensitivity"] = _fp32_by_sensitivity(ctx, quant_cfg, source, cache)
        quant_cfg = quant_cfg.model_copy(update={"exclude_nodes": quant_cfg.exclude_nodes + extra})
    with atomic_dir(out) as tmp:
        quantize_onnx(source, tmp, quant_cfg, ctx.train_ds, ctx.collate, cache)
        mark_int8(tmp, f"ort-{quant_cfg.method}")
    fp32 = onnx_variant(source, task=ctx.task).predict(ctx.eval_ds, ctx.collate)
    int8 = onnx_variant(out, task=ctx.task).predict(ctx.eval_ds, ctx.collate)
    labels = labels_of(ctx.eval_ds)
    before, after = ctx.task.metrics(fp32, labels, None), ctx.task.metrics(int8, labels, None)
    info.update(
        {
            "config": quant_cfg.model_dump(),
            "fp32_metrics": before,
            "int8_metrics": after,
            "agreement_with_fp32": parity(fp32, int8, ctx.task.classes_per_position)["agreement"],
            "size_mb": {"fp32": round(_onnx_mb(source), 3), "int8": round(_onnx_mb(out), 3)},
        }
    )
    log.info("quantized (%s): %s -> %s", cfg.method, before, after)
    return out, info


def _fp32_by_sensitivity(
    ctx: RunContext, cfg: QuantizeConfig, source: Path, cache: Path | None
) -> tuple[list[str], dict]:
    """Layers to keep FP32, measured on held-out training rows (after the calibration rows;
    the eval set is left for the report)."""
    from slimformer.export.sensitivity import choose_fp32_groups, graph_quantized, node_groups

    wanted = cfg.sensitivity.examples
    n_train = len(ctx.train_ds)
    start = min(cfg.calibration_examples, n_train) if cfg.method == "static" else 0
    if n_train - start < wanted:  # a small training set: the last rows, overlapping calibration
        start = max(0, n_train - wanted)
    rows = ctx.train_ds.select(range(start, min(n_train, start + wanted)))
    if "idx" in rows.column_names:  # predictions are placed by idx: 0..n-1 for this slice
        rows = rows.remove_columns("idx")
    rows = rows.add_column("idx", list(range(len(rows))))
    labels = labels_of(rows)
    if labels is None or len(rows) == 0:
        raise RecipeError(
            "quantize.sensitivity measures accuracy on labeled training rows, and data.train "
            "has none. Give data.train with a label column, or remove sensitivity."
        )

    def quantize(excluded: list[str], folder: Path) -> Path:
        candidate = cfg.model_copy(update={"exclude_nodes": cfg.exclude_nodes + excluded})
        quantize_onnx(source, folder, candidate, ctx.train_ds, ctx.collate, cache)
        return folder

    def outputs(folder: Path):
        return onnx_variant(folder, task=ctx.task).predict(rows, ctx.collate)

    def metric(values) -> float:
        return ctx.task.metrics(values, labels, None)[ctx.primary_metric]

    groups = node_groups(graph_quantized(source, cfg.method))
    excluded, report = choose_fp32_groups(
        groups, quantize, outputs, metric, outputs(source), cfg.sensitivity
    )
    report["rows"] = f"data.train[{start}:{start + len(rows)}]"
    report["metric"] = ctx.primary_metric
    return excluded, report


def mark_int8(folder: Path, quantization: str) -> None:
    """The folder says how it runs (``slimformer_runtime.json``), so bench and reports name its
    precision without opening the graph."""
    write_runtime_spec(
        folder, RuntimeSpec(runtime="onnxruntime", precision="int8", quantization=quantization)
    )


def _onnx_mb(folder: Path) -> float:
    return (Path(folder) / "model.onnx").stat().st_size / 2**20


@STAGES.register("optimize")
def optimize_stage(
    ctx: RunContext, cfg: OptimizeStage, model_dir: Path | None, stage_dir: Path, resume: bool
) -> tuple[Path, dict]:
    if model_dir is not None and is_onnx_folder(model_dir):
        raise RecipeError(
            f"Stage input {model_dir} is an ONNX model; optimize builds its ONNX candidates "
            f"itself from the PyTorch model. Put optimize after the training stages instead of "
            f"export/quantize."
        )
    model = trainable_model(ctx, model_dir)
    opt_cfg = OptimizeConfig(**{k: getattr(cfg, k) for k in OptimizeConfig.model_fields})
    chosen, info = optimize_model(
        model,
        ctx.tokenizer,
        ctx.task,
        ctx.eval_ds,
        ctx.train_ds,
        ctx.collate,
        opt_cfg,
        stage_dir / "work",
    )
    out = stage_dir / "model"
    with atomic_dir(out) as tmp:
        copy_choice(chosen, tmp)
    return out, info
