"""report.json of a multi-task run: every task's teacher and student metric, and latency of the
three ways to answer every task for a batch: the task teachers one after another, the
single-task students one after another (each head exported with its own copy of the encoder),
and the multi-task student (one encoder pass, every head)."""

from pathlib import Path

import torch

from slimformer.eval.latency import count_params, measure_latency
from slimformer.eval.predict import labels_of, predict
from slimformer.models.loading import size_on_disk_mb
from slimformer.models.multitask import TaskView, load_multitask
from slimformer.pipeline.multitask.context import MultiTaskContext
from slimformer.pipeline.report import machine_info


def _runner(model):
    def run(feed):
        with torch.inference_mode():
            return model(**feed)

    return run


def _all_tasks_runner(model):
    def run(feed):
        with torch.inference_mode():
            return model.forward_all(**feed)

    return run


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors")) / 2**20


def _sum(latencies: list[dict]) -> dict:
    return {k: round(sum(d[k] for d in latencies), 3) for k in latencies[0]}


def multitask_report(ctx: MultiTaskContext, model_dir: Path, stages: list[dict]) -> dict:
    model = load_multitask(model_dir)
    tasks, retained = {}, {}
    for name, sub in ctx.tasks.items():
        values = predict(TaskView(model, name), sub.task, sub.eval_ds, sub.collate)
        student = sub.task.metrics(values, labels_of(sub.eval_ds), ctx.reference(name))
        teacher = ctx.teacher_metrics(name)
        metric = ctx.metrics[name]
        retained[name] = round(student[metric] / teacher[metric], 4) if teacher[metric] else None
        tasks[name] = {
            "task": sub.task.name,
            "metric": metric,
            "teacher": {"model": sub.teacher_ref, "metrics": teacher},
            "student": {"metrics": student},
            "retained": retained[name],
        }
    single = {name: model.standalone(name) for name in ctx.tasks}
    teachers = {name: sub.load_teacher().eval() for name, sub in ctx.tasks.items()}
    vocab = model.config.vocab_size
    runners = {f"teacher/{n}": (_runner(m), vocab) for n, m in teachers.items()}
    runners |= {f"single/{n}": (_runner(m), vocab) for n, m in single.items()}
    runners["multi-task"] = (_all_tasks_runner(model.eval()), vocab)
    r = ctx.recipe.report
    latency = measure_latency(runners, tuple(r.batch_sizes), r.seq_len, r.repeats)
    teacher_latency = _sum([latency[f"teacher/{n}"] for n in teachers])
    single_latency = _sum([latency[f"single/{n}"] for n in single])
    student_latency = latency["multi-task"]

    def kept(side: str) -> dict:
        out = {f"{n}/{t['metric']}": t[side]["metrics"][t["metric"]] for n, t in tasks.items()}
        return {"retained_min": min(retained.values()) if side == "student" else 1.0, **out}

    return {
        "task": "multi-task",
        "tasks": tasks,
        "teacher": {
            "model": ", ".join(f"{n}: {sub.teacher_ref}" for n, sub in ctx.tasks.items()),
            "runtime": "pytorch",
            "metrics": kept("teacher"),
            "params": sum(count_params(m) for m in teachers.values()),
            "size_mb": round(
                sum(
                    size_on_disk_mb(Path(sub.teacher_ref))
                    for sub in ctx.tasks.values()
                    if Path(sub.teacher_ref).is_dir()
                ),
                3,
            ),
            "latency_ms": teacher_latency,
            "latency_ms_per_task": {n: latency[f"teacher/{n}"] for n in teachers},
        },
        "student": {
            "model": str(model_dir),
            "runtime": "pytorch",
            "metrics": kept("student"),
            "params": count_params(model),
            "size_mb": round(_folder_mb(model_dir), 3),
            "latency_ms": student_latency,
            "init": ctx.student_info,
        },
        "single_task_students": {
            "model": "each head exported with its own encoder (slimformer export-task)",
            "runtime": "pytorch",
            "params": sum(count_params(m) for m in single.values()),
            "latency_ms": single_latency,
            "latency_ms_per_task": {n: latency[f"single/{n}"] for n in single},
        },
        "speedup": {k: round(teacher_latency[k] / student_latency[k], 3) for k in student_latency},
        "speedup_vs_single_task_students": {
            k: round(single_latency[k] / student_latency[k], 3) for k in student_latency
        },
        "retained": retained,
        "latency_setup": {
            "seq_len": r.seq_len,
            "repeats": r.repeats,
            "statistic": "median",
            "threads": torch.get_num_threads(),
            "what": "every task answered for one batch",
        },
        "stages": stages,
        "machine": machine_info(),
    }
