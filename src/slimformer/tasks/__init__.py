"""One file per task shape; ``get_task(name)`` returns the registered one."""

from slimformer.tasks import (  # noqa: F401  (register)
    causal_lm,
    sentence_embedding,
    sequence_classification,
    token_classification,
)
from slimformer.tasks.base import TASKS, Aligned, Task


def get_task(name: str) -> Task:
    return TASKS.get(name)()


__all__ = ["TASKS", "Aligned", "Task", "get_task"]
