"""report.html: the comparison table, Pareto plots (metric vs latency, metric vs size), the
training curves and the recipe, in one self-contained file (plots embedded as PNG)."""

import html
import json

from slimformer.reporting.plots import curve_plot, pareto_plot

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}img{max-width:100%}
"""


# Marks how many plots the browser decoded, so a headless browser test can check them.
LOADED_SCRIPT = (
    "<script>window.addEventListener('load',()=>{document.body.setAttribute("
    "'data-plots-rendered',[...document.images].filter(i=>i.complete&&i.naturalWidth>0)"
    ".length)});</script>"
)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value)) if value is not None else ""


def table_html(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def table_markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _img(png: str, alt: str) -> str:
    src = f"data:image/png;base64,{png}"
    return f'<figure><img class="plot" alt="{html.escape(alt)}" src="{src}"></figure>'


def render_html(
    title: str,
    rows: list[dict],
    columns: list[str],
    metric: str,
    latency_key: str,
    machine: dict | None = None,
    curves: dict[str, tuple[list[float], list[float]]] | None = None,
    recipe_text: str | None = None,
) -> str:
    """``rows`` need ``name``, ``metric``, ``latency_key`` and ``size_mb`` for the plots."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if machine:
        parts.append(f"<p>Measured on: {html.escape(json.dumps(machine)[:600])}</p>")
    parts.append(table_html(rows, columns))
    plotted = [r for r in rows if r.get(metric) is not None and r.get(latency_key) is not None]
    if plotted:
        names = [str(r["name"]) for r in plotted]
        ys = [float(r[metric]) for r in plotted]
        parts.append("<h2>Accuracy vs latency</h2>")
        parts.append(
            _img(
                pareto_plot(
                    names,
                    [float(r[latency_key]) for r in plotted],
                    ys,
                    f"{latency_key.removeprefix('latency ')} latency (ms)",
                    metric,
                ),
                "metric vs latency",
            )
        )
        parts.append("<h2>Accuracy vs size</h2>")
        parts.append(
            _img(
                pareto_plot(
                    names, [float(r["size_mb"]) for r in plotted], ys, "size on disk (MB)", metric
                ),
                "metric vs size",
            )
        )
    if curves:
        parts.append("<h2>Training curves</h2>")
        parts.append(_img(curve_plot(curves, "step", metric), "training curves"))
    if recipe_text:
        parts.append("<h2>Recipe</h2><pre>" + html.escape(recipe_text) + "</pre>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}{LOADED_SCRIPT}</body></html>"
    )


def run_report_html(report: dict, recipe_text: str | None = None) -> str:
    """The HTML page of a run folder's report.json (teacher vs student, curves, recipe)."""
    metric = next(iter((report.get("student") or {}).get("metrics") or {"metric": 0}))
    rows = []
    for role in ("teacher", "student", "single_task_students"):  # the last: multi-task runs
        entry = report.get(role)
        if not entry:
            continue
        row = {
            "name": role,
            "model": entry["model"],
            "runtime": entry["runtime"],
            metric: (entry.get("metrics") or {}).get(metric),
            "params": entry.get("params"),
            "flops_per_example": entry.get("flops_per_example"),
            "size_mb": entry.get("size_mb"),
        }
        for k, v in (entry.get("latency_ms") or {}).items():
            row[f"latency {k} (ms)"] = v
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lat_keys = [c for c in columns if c.startswith("latency")]
    curves = {}
    for stage in report.get("stages", []):
        evals = stage.get("evals") or []
        points = [(e.get("step"), e.get(metric)) for e in evals if e.get(metric) is not None]
        if points:
            curves[f"{stage.get('stage', '')} {stage.get('kind', '')}".strip()] = (
                [p[0] for p in points],
                [p[1] for p in points],
            )
    return render_html(
        f"slimformer run: {report.get('task', '')}",
        rows,
        columns,
        metric,
        lat_keys[-1] if lat_keys else "",
        report.get("machine"),
        curves,
        recipe_text,
    )
