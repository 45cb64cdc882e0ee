"""Base for every typed config: unknown keys are errors, values are validated with their path."""

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """Pydantic model that forbids unknown keys, so a typo in a recipe never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
