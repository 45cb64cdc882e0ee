"""Short-row softmax padding: the values and gradients of torch's softmax, whichever width
this CPU measures; the switch puts torch's functions back."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from slimformer.utils import fast_softmax
from slimformer.utils.fast_softmax import fast_cpu_softmax, log_softmax, softmax

from .conftest import tiny_config


@pytest.fixture
def width16(monkeypatch):
    """As measured on AVX-512 CPUs: rows under 16 values take the slow path."""
    monkeypatch.setattr(fast_softmax, "fast_width", lambda: 16)


@pytest.mark.parametrize("length", [1, 5, 15, 16, 23])
@pytest.mark.parametrize(
    "ours,torchs", [(softmax, torch.softmax), (log_softmax, torch.log_softmax)]
)
def test_padded_rows_give_torchs_values_and_gradients(width16, length, ours, torchs):
    x = torch.randn(3, 4, 7, length, dtype=torch.float64)
    x[0, 0, 0, 1:] = float("-inf")  # a masked row: one real value
    x.requires_grad_()
    g = torch.randn(3, 4, 7, length, dtype=torch.float64)
    expected = torchs(x, -1)
    got = ours(x, -1)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected)
    (a,) = torch.autograd.grad(expected, x, g)
    (b,) = torch.autograd.grad(got, x, g)
    assert torch.allclose(a, b)


def test_dtype_argument_other_dims_and_bf16_inputs(width16):
    x = torch.randn(2, 3, 5).bfloat16()
    assert softmax(x, -1, dtype=torch.float32).dtype == torch.float32
    assert torch.allclose(softmax(x, -1, dtype=torch.float32), torch.softmax(x.float(), -1))
    assert torch.equal(softmax(x, 1), torch.softmax(x, 1))  # not the last dimension: torch's


def test_the_switch_patches_and_restores(width16):
    original = F.softmax
    with fast_cpu_softmax() as on:
        assert on and F.softmax is softmax and F.log_softmax is log_softmax
        with fast_cpu_softmax():  # nested: left as it is
            pass
        assert F.softmax is softmax
    assert F.softmax is original and F.log_softmax is not log_softmax


def test_nothing_is_switched_where_no_slow_path_was_measured(monkeypatch):
    monkeypatch.setattr(fast_softmax, "fast_width", lambda: 0)
    with fast_cpu_softmax() as on:
        assert not on and F.softmax is not softmax
    assert softmax(torch.randn(4, 3), -1).shape == (4, 3)


def test_eager_attention_gives_the_same_outputs_under_the_switch(width16):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        tiny_config(), attn_implementation="eager"
    ).eval()
    ids = torch.randint(5, 90, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    expected = model(input_ids=ids, attention_mask=mask).logits
    with fast_cpu_softmax():
        got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-6)


def test_the_measured_width_is_a_candidate_or_zero():
    assert fast_softmax.fast_width() in (0, *fast_softmax.CANDIDATE_WIDTHS)
