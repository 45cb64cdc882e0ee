"""Checkpoints for --resume: Accelerate's full state (model, optimizer, scheduler, RNGs) plus
where the loop was, written to a temp folder and renamed so a crash never leaves half of one."""

import json
import shutil
from pathlib import Path

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"


def save_checkpoint(accelerator: Accelerator, folder: Path, state: dict, keep: int = 2) -> None:
    """Every process calls this (Accelerate writes the shared state once and each process's
    random state); the folder appears under its final name only when complete."""
    target = folder / f"step-{state['step']:08d}"
    tmp = folder / f".{target.name}.tmp"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        for old in sorted(folder.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(folder: Path) -> Path | None:
    done = [p for p in sorted(Path(folder).glob("step-*")) if (p / STATE_FILE).exists()]
    return done[-1] if done else None


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())
