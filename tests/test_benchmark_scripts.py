"""The benchmark scripts refuse bad options before loading any model."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows", "textbrewer,nope"], "unknown rows ['nope']"),
        (["--rounds", "0"], "--rounds"),
        (["--threads", "0"], "--threads must be 1 or more"),
        (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
    ],
)
def test_textbrewer_compare_refuses_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script("textbrewer_compare").parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_textbrewer_compare_defaults_run_every_row_once():
    module = _script("textbrewer_compare")
    args = module.parse_args([])
    assert args.rows.split(",") == list(module.ROWS) and args.rounds == 1 and args.seeds == [0]
    assert args.threads == 2
    assert module.parse_args(["--seeds", "0,1,2"]).seeds == [0, 1, 2]


def test_textbrewer_compare_recipe_takes_the_seed():
    assert _script("textbrewer_compare").recipe(100, 1, "cache", "bf16", seed=2)["seed"] == 2


def test_textbrewer_compare_runs_each_row_in_its_own_process(tmp_path, monkeypatch):
    """A row's child process gets the row, seed, threads and sizes; its result comes back."""
    module = _script("textbrewer_compare")
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.write_text('{"library": "x", "samples_per_s": 1.0}')

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    row = module.run_row_isolated("cache-bf16", 100, 1, tmp_path, seed=3, threads=1)
    assert row == {"library": "x", "samples_per_s": 1.0}
    child = module.parse_args(calls[0][2:])
    assert (child.run_row, child.seeds, child.threads) == ("cache-bf16", [3], 1)
    assert (child.train_examples, child.epochs, child.work) == (100, 1, str(tmp_path))


def test_textbrewer_compare_child_runs_one_row(tmp_path, monkeypatch):
    module = _script("textbrewer_compare")
    seen = []
    monkeypatch.setitem(
        module.ROWS, "textbrewer", lambda n, e, w, s: seen.append((n, e, w, s)) or {"ok": 1}
    )
    out = tmp_path / "row.json"
    argv = ["--run-row", "textbrewer", "--seeds", "2", "--train-examples", "10", "--epochs", "1"]
    argv += ["--work", str(tmp_path), "--out", str(out)]
    monkeypatch.setattr(module.sys, "argv", ["textbrewer_compare.py", *argv])
    module.main()
    assert seen == [(10, 1, tmp_path, 2)] and out.read_text() == '{"ok": 1}'


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("malloc_state", ["--states", "fresh,nope"], "unknown states ['nope']"),
        ("malloc_state", ["--rounds", "0"], "--rounds must be 1 or more"),
        ("malloc_state", ["--workload", "nope"], "invalid choice"),
        ("student_step_overhead", ["--shapes", "32x26,nope"], "shape 'nope' must be BATCHxTOKENS"),
        ("student_step_overhead", ["--shapes", "0x26"], "needs a batch and tokens of 1 or more"),
        ("student_step_overhead", ["--steps", "0"], "--steps and --rounds must be 1 or more"),
    ],
)
def test_benchmark_scripts_refuse_bad_options(script, argv, message, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # both import textbrewer_compare
    with pytest.raises(SystemExit) as exit_info:
        _script(script).parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_student_step_overhead_defaults():
    args = _script("student_step_overhead").parse_args([])
    assert args.shapes == [(1, 2), (32, 26)] and (args.steps, args.rounds) == (30, 2)
