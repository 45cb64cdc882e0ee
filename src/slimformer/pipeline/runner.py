"""``slimformer run``: the stages of a recipe, into a run folder written atomically.

Work happens in ``DIR.incomplete/``; only a finished run is renamed to ``DIR``. ``--resume``
continues an interrupted one: finished stages are skipped, the current one resumes from its last
checkpoint. Layout of a finished run::

    DIR/model/        save_pretrained + tokenizer (the recipe's final model)
    DIR/recipe.yaml   the resolved recipe
    DIR/report.json   teacher vs student
    DIR/report.html   the same as a page: table, Pareto plots, training curves, recipe
    DIR/logs/         TensorBoard, one sub-folder per stage
    DIR/stages/       per-stage outputs and checkpoints
"""

import json
import logging
import shutil
from pathlib import Path

from slimformer.errors import OutputExistsError
from slimformer.eval.predict import labels_of
from slimformer.eval.variants import load_variant, torch_variant
from slimformer.pipeline import prune_stages, qat_stage  # noqa: F401  (register their stages)
from slimformer.pipeline.context import RunContext, build_context, teacher_eval_values
from slimformer.pipeline.multitask.context import build_multitask_context
from slimformer.pipeline.multitask.report import multitask_report
from slimformer.pipeline.multitask.stages import MULTITASK_STAGES
from slimformer.pipeline.recipe import MULTI_TASK, Recipe, dump_recipe
from slimformer.pipeline.report import build_report
from slimformer.pipeline.stages import STAGES
from slimformer.reporting.html import run_report_html
from slimformer.utils.atomic import write_json_atomic, write_text_atomic

log = logging.getLogger("slimformer")
DONE = "stage_done.json"


def work_dir_of(output: Path) -> Path:
    return output.with_name(output.name + ".incomplete")


def check_output(output: Path, resume: bool, overwrite: bool) -> Path:
    """Decide where to work, refusing to clobber anything unless told to. Under
    ``accelerate launch`` only the main process removes anything."""
    from slimformer.train.processes import processes

    state = processes()
    work = work_dir_of(output)
    if not state.is_main_process:
        state.wait_for_everyone()
        return work
    if output.exists() and not overwrite:
        raise OutputExistsError(
            f"Output folder {output} already exists. Pass --overwrite to "
            f"replace it, or choose another --output."
        )
    if work.exists() and not (resume or overwrite):
        raise OutputExistsError(
            f"An interrupted run is in {work}. Pass --resume to continue "
            f"it, or --overwrite to start again."
        )
    if overwrite and not resume:
        shutil.rmtree(work, ignore_errors=True)
    state.wait_for_everyone()
    return work


def run_recipe(
    recipe: Recipe,
    output: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | None = None,
) -> dict:
    from slimformer.train.processes import processes as run_processes

    output = Path(output)
    processes = run_processes()  # one under plain python; N under `accelerate launch`
    work = check_output(output, resume, overwrite)
    # all input checks happen here, before training
    if recipe.task == MULTI_TASK:
        ctx, stages, report_of = (
            build_multitask_context(recipe, cache_dir),
            MULTITASK_STAGES,
            multitask_report,
        )
    else:
        ctx, stages, report_of = build_context(recipe, cache_dir), STAGES, final_report
        if recipe.task == "causal-lm":
            from slimformer.pipeline.causal_lm_report import causal_lm_report

            report_of = causal_lm_report
    if processes.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        write_text_atomic(work / "recipe.yaml", dump_recipe(recipe))
    processes.wait_for_everyone()

    model_dir, summaries = None, []
    for i, entry in enumerate(recipe.stages):
        stage_dir = work / "stages" / f"{i}-{entry.kind}"
        done = stage_dir / DONE
        if done.exists():
            info = json.loads(done.read_text())
            log.info("stage %d (%s) already finished; skipping", i, entry.kind)
        else:
            log.info("stage %d: %s", i, entry.kind)
            run_stage = stages.get(entry.kind)
            out_dir, info = run_stage(ctx, entry.config, model_dir, stage_dir, resume)
            info = {
                "stage": i,
                "kind": entry.kind,
                "model_dir": str(out_dir.relative_to(work)),
                **info,
            }
            if processes.is_main_process:
                write_json_atomic(done, info)
        processes.wait_for_everyone()
        model_dir = work / info["model_dir"]
        summaries.append(info)

    if not processes.is_main_process:  # the main process measures and writes the report
        processes.wait_for_everyone()
        return {}

    report = report_of(ctx, model_dir, summaries)
    final_model = work / "model"
    shutil.rmtree(final_model, ignore_errors=True)
    shutil.copytree(model_dir, final_model)
    report["student"]["model"] = "model/"
    write_json_atomic(work / "report.json", report)
    recipe_file = work / "recipe.yaml"
    recipe_text = recipe_file.read_text() if recipe_file.is_file() else None
    write_text_atomic(work / "report.html", run_report_html(report, recipe_text))
    _gather_logs(work)
    if output.exists():
        shutil.rmtree(output)
    work.rename(output)
    log.info("run finished: %s", output)
    processes.wait_for_everyone()
    return report


def final_report(ctx: RunContext, model_dir: Path, stages: list[dict]) -> dict:
    student = load_variant(model_dir, ctx.task)
    teacher, reference = None, None
    if ctx.teacher_ref:
        reference = teacher_eval_values(ctx, sync=False)
        teacher_variant = torch_variant(ctx.load_teacher(), _teacher_folder(ctx), ctx.task)
        teacher = (
            ctx.teacher_ref,
            teacher_variant,
            ctx.task.metrics(reference, labels_of(ctx.eval_ds), reference),
        )
    values = student.predict(ctx.eval_ds, ctx.collate)
    metrics = ctx.task.metrics(values, labels_of(ctx.eval_ds), reference)
    r = ctx.recipe.report
    report = build_report(
        ctx.task.name,
        teacher,
        (str(model_dir), student, metrics),
        stages,
        r.batch_sizes,
        r.seq_len,
        r.repeats,
        ctx.task.auto_class,
    )
    report["student"]["init"] = ctx.student_info
    if ctx.primary_metric == "fidelity":
        report["fidelity"] = metrics.get("fidelity")
    elif teacher is not None and ctx.primary_metric in metrics:
        m = ctx.primary_metric
        report["retained"] = round(metrics[m] / teacher[2][m], 4)
    return report


def _teacher_folder(ctx: RunContext) -> Path:
    path = Path(ctx.teacher_ref)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download  # hub teacher: measure its cached files

    return Path(snapshot_download(ctx.teacher_ref))


def _gather_logs(work: Path) -> None:
    """Collect each stage's TensorBoard logs under DIR/logs/<stage>/."""
    logs = work / "logs"
    for stage_logs in sorted((work / "stages").glob("*/logs")):
        target = logs / stage_logs.parent.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(stage_logs, target)
