"""The one training loop. It knows nothing about tasks or KD: it takes a model, data and a
``loss_fn(model, batch, progress) -> (loss, logs)`` and handles optimisation, evaluation,
best-checkpoint selection, checkpoints/--resume, progress and TensorBoard, on Accelerate (so
``accelerate launch`` runs it on several GPUs or machines unchanged)."""

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import MethodType

import datasets
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import get_mixed_precision_context_manager, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from slimformer.data.batching import LengthGroupedBatchSampler, WholeRounds
from slimformer.errors import RecipeError
from slimformer.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from slimformer.train.clipping import clipped_step
from slimformer.train.config import TrainConfig
from slimformer.train.fast_dropout import fast_cpu_dropout
from slimformer.train.processes import use_cpu
from slimformer.train.seen_rows import follow_weight_decay, tables_in_place, train_seen_rows
from slimformer.utils.atomic import atomic_dir
from slimformer.utils.fast_softmax import fast_cpu_softmax
from slimformer.utils.malloc import keep_freed_memory

LossFn = Callable[[PreTrainedModel, dict, float], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[PreTrainedModel], dict[str, float]]


@dataclass
class TrainResult:
    model_dir: Path  # best (if evaluated) or final weights, save_pretrained
    steps: int
    evals: list[dict] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best: dict | None = None
    resumed_from: int | None = None
    lora: dict | None = None  # set by stages that train LoRA adapters


def build_optimizer(modules: list[torch.nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norms (the usual BERT recipe)."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    try:  # the fused kernel is ~5x faster on CPU; not every device/dtype has it
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def _allow_precision_change(mixed_precision: str) -> None:
    """Accelerate keeps one process-wide state and refuses a second Accelerator with another
    ``mixed_precision``; a recipe whose stages differ (fp32 fine-tuning, then bf16 distillation)
    runs them in one process, so the precision part of that state is reset (the process group,
    held by PartialState, is kept)."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _switch_attention(model: torch.nn.Module, implementation: str | None) -> Callable[[], None]:
    """Train with another attention kernel (``TrainConfig.attn_implementation``); returns
    what puts the model's own back."""
    own = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation is None or own is None or implementation == own:
        return lambda: None
    model.set_attn_implementation(implementation)
    return lambda: model.set_attn_implementation(own)


def _input_ids(train_ds) -> Iterable[list[int]]:
    """The rows' token ids: the ``datasets`` column (read once by the caller and reused), or,
    lazily, row by row from another map-style dataset (the multi-task mixture, whose model
    has no single embedding table, so this is never consumed there)."""
    if isinstance(train_ds, datasets.Dataset):
        return train_ds["input_ids"]
    return (train_ds[i]["input_ids"] for i in range(len(train_ds)))


def _trained_parameters(model: torch.nn.Module, loss_fn) -> list[torch.nn.Parameter]:
    aux = getattr(loss_fn, "aux_module", None)
    return list(model.parameters()) + (list(aux.parameters()) if aux is not None else [])


def _save_model(accelerator: Accelerator, model, target: Path, tokenizer=None) -> None:
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model)
        with atomic_dir(target) as tmp, tables_in_place(model):
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def _autocast_without_fp32_outputs(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Keep ``prepare``'s autocast around the model's forward but drop its cast of every
    output to fp32 (for vocabulary-sized LLM logits that cast is a full extra copy a step)."""
    core = accelerator.unwrap_model(model)
    original = getattr(core, "_original_forward", None)
    if original is None or not accelerator.native_amp:
        return  # no mixed precision: nothing was wrapped
    autocast = get_mixed_precision_context_manager(
        accelerator.native_amp, accelerator.autocast_handler
    )
    func = getattr(original, "__func__", None)
    core.forward = MethodType(autocast(func), core) if func is not None else autocast(original)


def train(
    model: PreTrainedModel,
    train_ds: datasets.Dataset,
    collate: Callable,
    loss_fn: LossFn,
    cfg: TrainConfig,
    out_dir: Path,
    seed: int,
    evaluate: EvalFn | None = None,
    primary_metric: str | None = None,
    resume: bool = False,
    tokenizer=None,
    on_step: Callable[[], None] | None = None,
    desc: str = "train",
    batch_sampler=None,
    lower_is_better: bool = False,
    keep_autocast_outputs: bool = False,
) -> TrainResult:
    """``batch_sampler``: a custom order (e.g. a curriculum) with ``set_epoch``/``len``;
    default: length-grouped, seeded batches. A ``loss_fn`` with trainable parameters of its own
    exposes them as ``loss_fn.aux_module``: they are optimised and checkpointed with the model
    (never saved with it), and the prepared module is put back on ``loss_fn``.
    ``lower_is_better``: the best checkpoint minimises ``primary_metric`` (perplexity).
    ``keep_autocast_outputs``: under mixed precision the model's outputs stay in the autocast
    dtype instead of being cast to fp32 (the losses must read them; see
    ``Task.keeps_autocast_outputs``)."""
    out_dir = Path(out_dir)
    set_seed(seed)
    _allow_precision_change(cfg.mixed_precision)
    accelerator = Accelerator(
        cpu=use_cpu(),
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard",
        project_dir=str(out_dir / "logs"),
    )
    input_ids = _input_ids(train_ds)
    sampler = batch_sampler or LengthGroupedBatchSampler(
        [len(x) for x in input_ids], cfg.batch_size, seed
    )
    if accelerator.num_processes > 1:
        sampler = WholeRounds(sampler, accelerator.num_processes)
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate)
    # batches per process: under `accelerate launch` each process sees its shard
    steps_per_epoch = math.ceil(
        math.ceil(len(sampler) / accelerator.num_processes) / cfg.grad_accum
    )
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    aux = getattr(loss_fn, "aux_module", None)
    restore_embeddings = train_seen_rows(
        model, input_ids, cfg.embedding_rows, getattr(tokenizer, "pad_token_id", None)
    )
    optimizer = build_optimizer([model] + ([aux] if aux is not None else []), cfg)
    follow_weight_decay(optimizer, model)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    restore_attention = _switch_attention(model, cfg.attn_implementation)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if keep_autocast_outputs:
        _autocast_without_fp32_outputs(accelerator, model)
    if aux is not None:
        loss_fn.aux_module = accelerator.prepare(aux)

    state = {
        "step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "best": None,
        "evals": [],
        "epoch_seconds": [],
    }
    resumed_from = None
    ckpt = latest_checkpoint(out_dir / "checkpoints") if resume else None
    if ckpt is not None:
        state = load_checkpoint(accelerator, ckpt)
        resumed_from = state["step"]
        accelerator.print(f"Resumed from {ckpt} (step {state['step']}/{total}).")
    accelerator.init_trackers(
        desc,
        config={
            k: v for k, v in cfg.model_dump().items() if isinstance(v, int | float | str | bool)
        },
    )

    def run_eval() -> None:
        metrics = evaluate(accelerator.unwrap_model(model))
        model.train()
        record = {"step": state["step"], **metrics}
        state["evals"].append(record)
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state["step"])
        if primary_metric not in metrics:
            raise RecipeError(
                f"best_metric {primary_metric!r} is not among the eval metrics "
                f"({', '.join(metrics)}); set best_metric to one of them."
            )
        score = metrics[primary_metric]
        best = None if state["best"] is None else state["best"][primary_metric]
        if best is None or (score < best if lower_is_better else score > best):
            state["best"] = record
            _save_model(accelerator, model, out_dir / "best", tokenizer)
        bar.write(
            f"eval step {state['step']}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        )

    model.train()
    bar = tqdm(
        total=total,
        initial=state["step"],
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        disable=not accelerator.is_local_main_process,
    )
    # freed step buffers stay in the heap: no page faults re-zeroing them every step
    with (
        keep_freed_memory(cfg.keep_freed_memory),
        fast_cpu_dropout(cfg.fast_dropout),
        fast_cpu_softmax(),
    ):
        while state["step"] < total:
            skip = state["batch_in_epoch"]
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            # The order must depend on our epoch only. Accelerate re-seeds samplers with its own
            # pass counter (0 in a fresh loader after --resume, and not advanced when a pass is
            # left early), and its skip/shard wrappers do not forward set_epoch: set both.
            sampler.set_epoch(state["epoch"])
            batches.set_epoch(state["epoch"])
            started = time.perf_counter()
            for batch in batches:
                # Dropout depends only on (seed, batch, rank): a resumed run replays the same masks
                # whatever else consumed the global RNG (data-loader iterators, evaluation).
                torch.manual_seed(
                    hash((seed, state["epoch"], state["batch_in_epoch"], accelerator.process_index))
                    % 2**63
                )
                with accelerator.accumulate(model):
                    loss, logs = loss_fn(model, batch, state["step"] / total)
                    accelerator.backward(loss)
                    with clipped_step(
                        accelerator,
                        optimizer,
                        _trained_parameters(model, loss_fn),
                        cfg.max_grad_norm if accelerator.sync_gradients else None,
                    ):
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                state["batch_in_epoch"] += 1
                if not accelerator.sync_gradients:
                    continue
                state["step"] += 1
                bar.update(1)
                if on_step is not None:
                    on_step()
                if state["step"] % cfg.log_every == 0:
                    logs = {
                        "train/loss": loss.detach().item(),
                        "train/lr": scheduler.get_last_lr()[0],
                        **{f"train/{k}": v for k, v in logs.items()},
                    }
                    accelerator.log(logs, step=state["step"])
                    bar.set_postfix(loss=f"{logs['train/loss']:.4f}")
                if state["batch_in_epoch"] >= len(loader) or state["step"] >= total:
                    break  # end-of-epoch / end-of-training work happens below, once
                if evaluate and cfg.eval_every and state["step"] % cfg.eval_every == 0:
                    run_eval()
                if state["step"] % cfg.save_every == 0:
                    save_checkpoint(accelerator, out_dir / "checkpoints", state)
            epoch_done = state["batch_in_epoch"] >= len(loader)
            if epoch_done:
                state["epoch_seconds"].append(time.perf_counter() - started)
                accelerator.print(
                    f"epoch {state['epoch'] + 1} took "
                    f"{state['epoch_seconds'][-1]:.1f}s"
                    + (f" (resumed after {skip} batches)" if skip else "")
                )
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
            if evaluate and (
                epoch_done
                and not cfg.eval_every
                or state["step"] >= total
                or cfg.eval_every
                and state["step"] % cfg.eval_every == 0
            ):
                run_eval()
            save_checkpoint(accelerator, out_dir / "checkpoints", state)
    bar.close()
    if evaluate and (not state["evals"] or state["evals"][-1]["step"] != state["step"]):
        run_eval()
    if not evaluate:
        _save_model(accelerator, model, out_dir / "final", tokenizer)
    restore_attention()
    restore_embeddings()
    for tracker in accelerator.trackers:  # not end_training(): it also ends the process
        tracker.finish()  # group, which later stages and the run folder still use
    return TrainResult(
        model_dir=out_dir / ("best" if evaluate else "final"),
        steps=state["step"],
        evals=state["evals"],
        epoch_seconds=state["epoch_seconds"],
        best=state["best"],
        resumed_from=resumed_from,
    )
