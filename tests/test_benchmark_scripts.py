"""The benchmark scripts refuse bad options before loading any model."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "textbrewer_compare.py"


def _textbrewer_compare():
    spec = importlib.util.spec_from_file_location("textbrewer_compare", SCRIPT)
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
        _textbrewer_compare().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_textbrewer_compare_defaults_run_every_row_once():
    module = _textbrewer_compare()
    args = module.parse_args([])
    assert args.rows.split(",") == list(module.ROWS) and args.rounds == 1 and args.seeds == [0]
    assert args.threads == 2
    assert module.parse_args(["--seeds", "0,1,2"]).seeds == [0, 1, 2]


def test_textbrewer_compare_recipe_takes_the_seed():
    assert _textbrewer_compare().recipe(100, 1, "cache", "bf16", seed=2)["seed"] == 2
