"""`slimformer bench` writes one table for every variant (each measured in its own process) and
an HTML report whose plots a real browser renders; every run folder gets report.html too."""

import json
import os
import re
import shutil
import subprocess

import pytest

from slimformer.reporting.html import run_report_html
from slimformer.reporting.plots import pareto_front


def test_pareto_front():
    # (latency, accuracy): lower latency and higher accuracy are better
    points = [(10, 0.90), (5, 0.85), (20, 0.91), (12, 0.80), (5, 0.84)]
    assert pareto_front(points) == [1, 0, 2]


def test_bench_every_variant(tiny_teacher, sst2_slice, tmp_path, capsys):
    from slimformer.cli import main

    out = tmp_path / "bench"
    args = [
        "bench",
        f"tiny={tiny_teacher}",
        "--data",
        str(sst2_slice["dev"]),
        "--text-column",
        "sentence",
        "--expand",
        "--rounds",
        "1",
        "--repeats",
        "2",
        "--batch-sizes",
        "1,4",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads((out / "bench.json").read_text())
    names = [v["name"] for v in result["variants"]]
    assert names == [
        "tiny",
        "tiny-pt-int8-dynamic",
        "tiny-onnxruntime-fp32",
        "tiny-onnxruntime-int8-dynamic",
    ]
    for v in result["variants"]:
        assert set(v["latency_ms"]) == {
            f"bs{b}_seq{s}" for b in (1, 4) for s in result["setup"]["seq_lens"]
        }
        assert set(next(iter(v["latency_ms"].values()))) == {"p50", "p95", "p99"}
        assert v["peak_rss_mb"] > 50 and v["size_mb"] > 0 and "accuracy" in v["metrics"]
    assert {v["runtime"] for v in result["variants"]} == {"pytorch", "onnxruntime"}
    md = (out / "bench.md").read_text()
    assert md.count("\n|") >= 5 and "tiny-onnxruntime-int8-dynamic" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert page.count('class="plot"') == 2


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("CI"),
    reason="Chromium not installed (.ci/run installs it; in CI its absence fails)",
)
def test_report_renders_in_headless_chromium(tmp_path):
    report = {
        "task": "sequence-classification",
        "teacher": {
            "model": "t",
            "runtime": "pytorch",
            "metrics": {"accuracy": 0.88},
            "params": 22,
            "size_mb": 87.0,
            "latency_ms": {"bs1": 13, "bs32": 200},
        },
        "student": {
            "model": "model/",
            "runtime": "pytorch",
            "metrics": {"accuracy": 0.87},
            "params": 11,
            "size_mb": 60.0,
            "latency_ms": {"bs1": 7, "bs32": 100},
        },
        "stages": [
            {
                "stage": 0,
                "kind": "distill",
                "evals": [{"step": 100, "accuracy": 0.8}, {"step": 200, "accuracy": 0.87}],
            }
        ],
        "machine": {"cpu": "test"},
    }
    page = tmp_path / "report.html"
    page.write_text(run_report_html(report, "task: sequence-classification\n"))
    dom = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    rendered = re.search(r'data-plots-rendered="(\d+)"', dom)
    assert rendered and int(rendered.group(1)) == 3  # metric vs latency, vs size, curves
    assert "task: sequence-classification" in dom
