"""Clipping folded into the fused AdamW step equals clip_grad_norm_ followed by the step."""

import pytest
import torch
from accelerate import Accelerator

from slimformer.train.clipping import clipped_step


def _run(fused: bool, fold: bool, max_norm: float | None, grad_scale: float = 3.0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
    acc = Accelerator(cpu=True)
    for _ in range(3):
        x = torch.randn(4, 8) * grad_scale
        model(x).pow(2).sum().backward()
        if fold:
            with clipped_step(acc, opt, model.parameters(), max_norm):
                opt.step()
            assert not hasattr(opt, "grad_scale")
        else:
            if max_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.zero_grad()
    return [p.detach() for p in model.parameters()], grads


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [0.5, 1e6, None])
def test_clipped_step_matches_clip_then_step(fused, max_norm):
    params, grads = _run(fused, fold=True, max_norm=max_norm)
    ref_params, ref_grads = _run(fused, fold=False, max_norm=max_norm)
    for a, b in zip(params + grads, ref_params + ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clipped_step_leaves_gradients_clipped():
    _, grads = _run(True, fold=True, max_norm=0.5)
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    assert total == pytest.approx(0.5, rel=1e-4)


def test_fused_adamw_takes_the_folded_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("clip_grad_norm_ ran: the clip factor did not ride on the kernel")

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", refuse)
    _run(True, fold=True, max_norm=0.5)
    with pytest.raises(AssertionError, match="did not ride"):
        _run(False, fold=True, max_norm=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_total_norm_is_the_norm_over_all_gradients(dtype):
    from slimformer.train.clipping import total_norm

    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=g).to(dtype) for s in [(300, 7), (5,), (2, 3, 4), (1,)]]
    grads.append(torch.randn(6, 4, generator=g).to(dtype).t())  # not contiguous
    exact = torch.stack([x.double().square().sum() for x in grads]).sum().sqrt()
    assert float(total_norm(grads)) == pytest.approx(
        float(exact), rel=1e-6 if dtype == torch.float32 else 1e-2
    )
