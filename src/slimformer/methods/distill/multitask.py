"""The multi-task objective: each batch goes to its task's head and its task's loss (that task's
teacher, hard loss and KD settings), scaled by the task's weight."""

from slimformer.data.multitask import TASK_KEY
from slimformer.methods.distill.objective import KDLoss
from slimformer.models.multitask import TaskView


class MultiTaskLoss:
    """``loss(model, batch, progress) -> (loss, logs)`` for a ``MultiTaskModel``."""

    aux_module = None  # no trainable parameters outside the model

    def __init__(self, losses: dict[str, KDLoss], weights: dict[str, float]) -> None:
        self.losses = losses
        self.weights = weights

    def __call__(self, model, batch: dict, progress: float):
        name = batch[TASK_KEY]
        inner = {k: v for k, v in batch.items() if k != TASK_KEY}
        loss, logs = self.losses[name](TaskView(model, name), inner, progress)
        logs = {f"{name}/{k}": v for k, v in logs.items()}
        logs[f"{name}/loss"] = loss.detach().item()
        return self.weights[name] * loss, logs
