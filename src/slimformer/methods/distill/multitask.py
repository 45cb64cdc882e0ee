"""The multi-task objective: each batch goes to its task's head and its task's loss (that task's
teacher, hard loss and KD settings), scaled by the task's weight."""

from torch import nn

from slimformer.data.multitask import TASK_KEY
from slimformer.methods.distill.objective import KDLoss
from slimformer.models.multitask import TaskView


class MultiTaskLoss:
    """``loss(model, batch, progress) -> (loss, logs)`` for a ``MultiTaskModel``."""

    def __init__(self, losses: dict[str, KDLoss], weights: dict[str, float]) -> None:
        self.losses = losses
        self.weights = weights
        # the tasks' own trainable parameters (layer-wise projections), trained with the model
        own = {n: loss.aux_module for n, loss in losses.items() if loss.aux_module is not None}
        self.aux_module = nn.ModuleDict(own) if own else None

    def __call__(self, model, batch: dict, progress: float):
        name = batch[TASK_KEY]
        if self.aux_module is not None and name in self.aux_module:
            self.losses[name].aux_module = self.aux_module[name]  # the prepared module
        inner = {k: v for k, v in batch.items() if k != TASK_KEY}
        loss, logs = self.losses[name](TaskView(model, name), inner, progress)
        logs = {f"{name}/{k}": v for k, v in logs.items()}
        logs[f"{name}/loss"] = loss.detach().item()
        return self.weights[name] * loss, logs
