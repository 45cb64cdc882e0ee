"""Loss terms against values computed by hand (two classes, small numbers)."""

import math

import pytest
import torch

from slimformer.methods.distill.losses import HARD_LOSSES, SOFT_LOSSES


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_kl_matches_hand_computed_with_temperature():
    s, t, temp = [1.0, 2.0], [3.0, 0.0], 2.0
    ps, pt = softmax([x / temp for x in s]), softmax([x / temp for x in t])
    expected = temp**2 * sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True))
    got = SOFT_LOSSES.get("kl")(torch.tensor([s]), torch.tensor([t]), torch.tensor([True]), temp)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kl_is_zero_for_identical_and_ignores_masked_rows():
    s = torch.tensor([[1.0, 2.0], [5.0, -5.0]])
    t = torch.tensor([[1.0, 2.0], [-5.0, 5.0]])
    got = SOFT_LOSSES.get("kl")(s, t, torch.tensor([True, False]), 3.0)
    assert got.item() == pytest.approx(0.0, abs=1e-7)


def test_cross_entropy_hand_computed_and_ignore_index():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, -100])
    expected = -math.log(softmax([2.0, 0.0])[0])
    got = HARD_LOSSES.get("ce")(logits, labels, torch.tensor([True, True]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_mse_soft_and_hard():
    s, t = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])
    assert SOFT_LOSSES.get("mse")(s, t, torch.tensor([True]), 1.0).item() == pytest.approx(2.5)
    pred, gold = torch.tensor([[2.0], [4.0]]), torch.tensor([1.0, 1.0])
    got = HARD_LOSSES.get("mse")(pred, gold, torch.tensor([True, True]))
    assert got.item() == pytest.approx((1 + 9) / 2)


def test_cosine_distance():
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    got = SOFT_LOSSES.get("cosine")(s, t, torch.tensor([True, True]), 1.0)
    assert got.item() == pytest.approx((1.0 + 0.0) / 2, abs=1e-6)


def test_all_masked_gives_zero_not_nan():
    got = SOFT_LOSSES.get("kl")(
        torch.randn(3, 4), torch.randn(3, 4), torch.zeros(3, dtype=torch.bool), 2.0
    )
    assert got.item() == 0.0


def test_objective_mixes_alpha_and_follows_temperature_schedule():
    from slimformer.methods.distill.objective import DistillLossConfig, make_loss_fn
    from slimformer.tasks.base import Aligned, Task

    class FakeTask:
        hard_loss = Task.hard_loss

        def forward(self, model, batch):
            return Aligned(batch["s"], torch.ones(1, dtype=torch.bool))

        def hard_targets(self, batch):
            return batch["labels"]

    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]])
    cfg = DistillLossConfig(alpha=0.25, temperature={"schedule": "linear", "start": 4, "end": 1})
    fn = make_loss_fn(FakeTask(), cfg, lambda batch: t)
    batch = {"s": s, "labels": torch.tensor([1])}
    loss, logs = fn(None, batch, 1.0)
    assert logs["temperature"] == pytest.approx(1.0)
    kl = SOFT_LOSSES.get("kl")(s, t, torch.tensor([True]), 1.0)
    ce = HARD_LOSSES.get("ce")(s, torch.tensor([1]), torch.tensor([True]))
    assert loss.item() == pytest.approx(0.25 * kl.item() + 0.75 * ce.item(), rel=1e-6)
    _, logs = fn(None, batch, 0.0)
    assert logs["temperature"] == pytest.approx(4.0)


def test_schedules():
    from slimformer.methods.distill.schedules import Schedule

    assert Schedule(schedule="linear", start=5, end=1).at(0.5) == pytest.approx(3.0)
    cos = Schedule(schedule="cosine", start=5, end=1)
    assert cos.at(0.0) == pytest.approx(5.0) and cos.at(1.0) == pytest.approx(1.0)
    assert cos.at(0.5) == pytest.approx(3.0)
    assert Schedule(schedule="constant", start=2, end=9).at(0.7) == 2


def test_rkd_distance_hand_computed_and_scale_free():
    from slimformer.methods.distill.losses.rkd import rkd_distance

    mask = torch.tensor([True, True, True, False])
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [9.0, 9.0]])
    # a scaled copy has the same normalised distances: zero loss
    assert rkd_distance(teacher * 5, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    # student distances 1, 1, sqrt(2) (mean 1.138); teacher 3, 4, 5 (mean 4)
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    s = torch.tensor([1.0, 1.0, 2**0.5]) / ((2 + 2**0.5) / 3)
    t = torch.tensor([3.0, 4.0, 5.0]) / 4.0
    diff = (s - t).abs()
    huber = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5)
    expected = 2 * huber.sum() / 9  # each pair twice in the 3x3 matrix, diagonal 0
    assert rkd_distance(student, teacher, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_rkd_angle_zero_for_similar_shapes_and_positive_otherwise():
    from slimformer.methods.distill.losses.rkd import rkd_angle

    mask = torch.ones(4, dtype=torch.bool)
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    rotated = teacher @ torch.tensor([[0.0, -1.0], [1.0, 0.0]]) * 3 + 7  # angles kept
    assert rkd_angle(rotated, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    squashed = teacher * torch.tensor([1.0, 0.1])
    assert rkd_angle(squashed, teacher, mask).item() > 0.01
    assert rkd_angle(teacher[:2], teacher[:2], mask[:2]).item() == 0.0  # < 3 rows: no angles
