"""fast_cpu_dropout: the same Bernoulli masks as torch's dropout, from fewer random draws."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimformer.train import fast_dropout
from slimformer.train.fast_dropout import (
    _torch_dropout,
    dropout,
    fast_cpu_dropout,
    keep_mask,
    masks_are_faster,
)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    kept = keep_mask((1000, 1001), p).float().mean().item()  # odd size: a partial last draw
    assert kept == pytest.approx(1 - p, abs=0.003)


def test_masks_follow_torch_manual_seed():
    torch.manual_seed(3)
    first = keep_mask((64, 7), 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask((64, 7), 0.1))
    assert not torch.equal(first, keep_mask((64, 7), 0.1))


def test_kept_values_are_scaled_and_gradients_follow_the_mask():
    torch.manual_seed(0)
    x = torch.randn(8, 50, requires_grad=True)
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x.detach()[kept] / 0.8)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.8)


def test_keeps_the_dtype_and_works_in_place():
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert dropout(x, 0.1, training=True).dtype == torch.bfloat16
    z = torch.ones(4, 16)
    out = dropout(z, 0.5, training=True, inplace=True)
    assert out.data_ptr() == z.data_ptr()
    assert set(z.unique().tolist()) <= {0.0, 2.0}


def test_eval_mode_and_p_zero_pass_the_input_through():
    x = torch.randn(3, 5)
    assert torch.equal(dropout(x, 0.1, training=False), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)


def test_switches_module_and_functional_dropout_and_restores_them():
    layer = nn.Dropout(0.1).train()
    with fast_cpu_dropout() as on:
        assert on and F.dropout is dropout
        with fast_cpu_dropout():  # nested: the outer block restores
            pass
        assert F.dropout is dropout
        torch.manual_seed(1)
        through_module = layer(torch.ones(32, 32))
    torch.manual_seed(1)
    assert torch.equal(through_module, dropout(torch.ones(32, 32), 0.1))
    assert F.dropout is _torch_dropout
    with pytest.raises(RuntimeError), fast_cpu_dropout():
        raise RuntimeError("a failed step")
    assert F.dropout is _torch_dropout
    with fast_cpu_dropout(enabled=False) as on:
        assert not on and F.dropout is _torch_dropout


@pytest.mark.parametrize("faster", [True, False])
def test_auto_switches_only_where_the_masks_measured_faster(monkeypatch, faster):
    monkeypatch.setattr(fast_dropout, "masks_are_faster", lambda: faster)
    with fast_cpu_dropout("auto") as on:
        assert on == faster
        assert (F.dropout is dropout) == faster
    assert F.dropout is _torch_dropout


def test_timing_the_two_kernels_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    assert isinstance(masks_are_faster.__wrapped__(numel=4096, repeats=2), bool)
    assert torch.equal(torch.rand(4), expected)
