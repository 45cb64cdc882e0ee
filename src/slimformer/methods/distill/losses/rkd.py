"""Relational KD (Park et al., 2019): match the *relations* between the examples of a batch
instead of each output alone. Distance: pairwise Euclidean distances, each set divided by its
mean (scale-free), compared with Huber loss. Angle: cosines of the angles formed by every
triple of examples, compared with Huber loss. Both use only the valid rows (mask)."""

import torch
import torch.nn.functional as F

from slimformer.methods.distill.losses.base import SOFT_LOSSES


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)
    off_diagonal = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    mean = d[off_diagonal].mean().clamp(min=1e-12)
    return d / mean


@SOFT_LOSSES.register("rkd_distance")
def rkd_distance(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    s, t = student[mask].float(), teacher[mask].float()
    if len(s) < 2:
        return student.sum() * 0.0
    with torch.no_grad():
        target = _normalised_distances(t)
    return F.smooth_l1_loss(_normalised_distances(s), target)


def _angles(x: torch.Tensor) -> torch.Tensor:
    """cos of angle(x_i - x_j, x_k - x_j) for every (i, j, k): (N, N, N)."""
    diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # [j, i] = x_i - x_j
    return torch.bmm(diff, diff.transpose(1, 2))


@SOFT_LOSSES.register("rkd_angle")
def rkd_angle(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    s, t = student[mask].float(), teacher[mask].float()
    if len(s) < 3:
        return student.sum() * 0.0
    with torch.no_grad():
        target = _angles(t)
    return F.smooth_l1_loss(_angles(s), target)
