"""Which teacher layer each student layer learns from. Layers are numbered as hidden states:
0 is the embedding output, 1..N the transformer blocks; the embeddings always map 0 -> 0."""

import math
from typing import Literal

from slimformer.errors import RecipeError

MappingRule = Literal["uniform", "last"] | list[int]


def layer_mapping(student_layers: int, teacher_layers: int, rule: MappingRule) -> dict[int, int]:
    """Student block m (1-based) -> teacher block (1-based).

    ``uniform`` (TinyBERT's g(m) = m * T / S, rounded half up): spread over the whole teacher,
    works for any depth pair, the last student layer always meets the last teacher layer;
    ``last``: the student's blocks meet the teacher's last S blocks; a list gives the teacher
    layer number for each student layer in order.
    """
    s, t = student_layers, teacher_layers
    if rule == "uniform":
        return {m: min(t, max(1, math.floor(m * t / s + 0.5))) for m in range(1, s + 1)}
    if rule == "last":
        if s > t:
            raise RecipeError(
                f"intermediate.mapping 'last' needs a student no deeper than the teacher "
                f"({s} > {t} layers); use 'uniform' or an explicit list."
            )
        return {m: t - s + m for m in range(1, s + 1)}
    if len(rule) != s:
        raise RecipeError(
            f"intermediate.mapping lists {len(rule)} teacher layers but the student has {s}: "
            f"give one teacher layer number (1..{t}) per student layer."
        )
    bad = [x for x in rule if not 1 <= x <= t]
    if bad:
        raise RecipeError(
            f"intermediate.mapping {rule}: teacher layer(s) {bad} out of range; the teacher has "
            f"layers 1..{t} (0 is the embedding output, always mapped to itself)."
        )
    return {m: rule[m - 1] for m in range(1, s + 1)}
