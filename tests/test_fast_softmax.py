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
    """As measured on AVX-512 CPUs for fp32: rows under 16 values take the slow path."""
    monkeypatch.setattr(fast_softmax, "fast_width", lambda dtype=torch.float32: 16)


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
    monkeypatch.setattr(fast_softmax, "fast_width", lambda dtype=torch.float32: 0)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_measured_width_is_a_candidate_or_zero(dtype):
    assert fast_softmax.fast_width(dtype) in (0, *fast_softmax.CANDIDATE_WIDTHS)


def test_rows_are_padded_to_the_width_of_the_dtype_softmax_runs_in(monkeypatch):
    """bf16 vectors hold twice as many values: as measured on AVX-512 CPUs, bf16 rows are
    padded to 32 and fp32 rows to 16; a ``dtype=`` argument is the dtype that counts."""
    widths = {torch.float32: 16, torch.bfloat16: 32}
    monkeypatch.setattr(fast_softmax, "fast_width", lambda dtype=torch.float32: widths[dtype])
    seen = []

    def spy(x, dim=None, _stacklevel=3, dtype=None):
        seen.append(x.shape[-1])
        return torch.softmax(x, dim, dtype=dtype)

    monkeypatch.setattr(fast_softmax, "_torch_softmax", spy)
    x = torch.randn(2, 3, 20, generator=torch.Generator().manual_seed(0)).bfloat16()
    # torch's bf16 vector and scalar paths may round differently in the last bit
    got = softmax(x, -1)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), torch.softmax(x.float(), -1), atol=1e-2)
    assert torch.allclose(softmax(x, -1, dtype=torch.float32), torch.softmax(x.float(), -1))
    assert seen == [32, 20]  # bf16 padded to 32; converted to fp32, 20 is past fp32's 16


def test_the_switch_turns_on_where_only_bf16_has_a_slow_path(monkeypatch):
    widths = {torch.float32: 0, torch.bfloat16: 32}
    monkeypatch.setattr(fast_softmax, "fast_width", lambda dtype=torch.float32: widths[dtype])
    with fast_cpu_softmax() as on:
        assert on and F.softmax is softmax


def test_a_non_float_dtype_argument_gets_torchs_own_error(width16):
    x = torch.randn(2, 5)
    with pytest.raises(RuntimeError) as ours:
        softmax(x, -1, dtype=torch.int64)
    with pytest.raises(RuntimeError) as torchs:
        torch.softmax(x, -1, dtype=torch.int64)
    assert str(ours.value) == str(torchs.value)
