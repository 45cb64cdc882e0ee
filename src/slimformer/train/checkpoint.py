"""Checkpoints for --resume: Accelerate's full state (model, optimizer, scheduler, RNGs) plus
where the loop was, written to a temp folder and renamed so a crash never leaves half of one."""

import json
import shutil
from pathlib import Path

from accelerate import Accelerator

from slimformer.utils.atomic import atomic_dir

STATE_FILE = "trainer_state.json"


def save_checkpoint(accelerator: Accelerator, folder: Path, state: dict, keep: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{state['step']:08d}"
    if accelerator.is_main_process:
        with atomic_dir(target) as tmp:
            accelerator.save_state(str(tmp), safe_serialization=True)
            (tmp / STATE_FILE).write_text(json.dumps(state))
        for old in sorted(folder.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(folder: Path) -> Path | None:
    done = [p for p in sorted(Path(folder).glob("step-*")) if (p / STATE_FILE).exists()]
    return done[-1] if done else None


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())
