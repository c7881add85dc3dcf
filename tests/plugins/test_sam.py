"""SAM and ASAM steps against hand computations, and their checkpoint round trip.

The hand computations restate the papers' formulas in plain tensor ops on a linear
least-squares model whose gradient is written out (no autograd):

    loss(w, b) = mean((X w + b - y)^2);  dL/dw = 2/n X^T r,  dL/db = 2/n sum(r),  r = X w + b - y
    SAM  (Foret et al., ICLR 2021):  e = rho g / ||g||
    ASAM (Kwon et al., ICML 2021):   e = rho T^2 g / ||T g||,  T = |w| elementwise
    g' = grad at (w + e);  w_new = base_step(w, g')
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ssltk.config import OptimConfig
from ssltk.engine.optim import build_optimizer, cosine_schedule
from ssltk.interfaces import TwoStepOptimizer

pytestmark = pytest.mark.numerics

LR, MOMENTUM = 0.1, 0.9


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3
    return x, y


def _model() -> nn.Linear:
    model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.4, -0.7, 1.2]], dtype=torch.float64))
        model.bias.fill_(-0.5)
    return model


def _grad(w: torch.Tensor, b: torch.Tensor, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    r = x @ w + b - y  # (n,)
    return 2 / len(y) * x.T @ r, 2 / len(y) * r.sum()


def _hand_steps(rho: float, adaptive: bool, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` SAM/ASAM steps around SGD with momentum (torch's: buf = m buf + g'; w -= lr buf;
    buf = g' at the first step), in plain tensor ops."""
    x, y = _data()
    w, b = torch.tensor([0.4, -0.7, 1.2], dtype=torch.float64), torch.tensor(-0.5,
                                                                            dtype=torch.float64)
    buf_w = buf_b = None
    for _ in range(steps):
        gw, gb = _grad(w, b, x, y)
        tw, tb = (w.abs(), b.abs()) if adaptive else (torch.ones_like(w), torch.ones_like(b))
        norm = torch.sqrt(((tw * gw) ** 2).sum() + (tb * gb) ** 2)
        ew, eb = rho * tw**2 * gw / norm, rho * tb**2 * gb / norm
        gw2, gb2 = _grad(w + ew, b + eb, x, y)  # the gradient at the perturbed point
        buf_w = gw2.clone() if buf_w is None else MOMENTUM * buf_w + gw2
        buf_b = gb2.clone() if buf_b is None else MOMENTUM * buf_b + gb2
        w, b = w - LR * buf_w, b - LR * buf_b
    return w, b


def _sam(model: nn.Module, rho: float, adaptive: bool):
    return build_optimizer(model, OptimConfig(
        name="sam", base={"name": "sgd", "momentum": MOMENTUM}, rho=rho, adaptive=adaptive,
        lr=LR, weight_decay=0.0))


def _loss(model, x, y):
    return ((model(x)[:, 0] - y) ** 2).mean()


def _engine_step(model, opt, x, y) -> None:
    """What ssltk.engine.pretraining does with a TwoStepOptimizer."""
    opt.zero_grad()
    _loss(model, x, y).backward()
    opt.first_step()
    opt.zero_grad()
    _loss(model, x, y).backward()
    opt.step()


@pytest.mark.parametrize(("rho", "adaptive"), [(0.05, False), (2.0, True)], ids=["sam", "asam"])
def test_two_steps_match_the_hand_computation(rho, adaptive):
    x, y = _data()
    model = _model()
    opt = _sam(model, rho, adaptive)
    assert isinstance(opt, TwoStepOptimizer)
    for _ in range(2):  # the second step goes through the base optimiser's momentum buffer
        _engine_step(model, opt, x, y)
    w, b = _hand_steps(rho, adaptive, steps=2)
    torch.testing.assert_close(model.weight.detach()[0], w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.bias.detach()[0], b, rtol=1e-12, atol=1e-12)
    # ... and differs from a plain SGD step by far more than rounding: the test can fail.
    plain = _hand_steps(1e-30, False, steps=2)[0]
    assert (w - plain).abs().max() > 1e-3


@pytest.mark.parametrize("adaptive", [False, True])
def test_closure_form_gives_the_same_step(adaptive):
    x, y = _data()
    a, b = _model(), _model()
    opt_a, opt_b = _sam(a, 0.5, adaptive), _sam(b, 0.5, adaptive)
    _engine_step(a, opt_a, x, y)

    def closure():
        opt_b.zero_grad()
        loss = _loss(b, x, y)
        loss.backward()
        return loss

    closure()
    opt_b.step(closure)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_perturbation_norm_and_exact_restore():
    x, y = _data()
    model = _model()
    opt = _sam(model, rho=0.3, adaptive=False)
    _loss(model, x, y).backward()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt.first_step()
    e = torch.cat([(p.detach() - w).flatten() for p, w in zip(model.parameters(), w0)])
    assert e.norm().item() == pytest.approx(0.3, rel=1e-9)  # ||e|| = rho
    opt.restore()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))  # bit for bit
    with pytest.raises(RuntimeError, match="first_step"):
        opt.step()


def test_asam_is_scale_invariant():
    # ASAM's point: T_w^-1 e is unchanged when a layer's weights are scaled by c (and its
    # gradient by 1/c, as for a layer followed by a normalisation): e scales by c.
    w = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)
    g = torch.tensor([0.3, 0.1, -0.4], dtype=torch.float64)
    from ssltk_optimizers.sam import perturbation

    e1 = perturbation([w], [g], rho=2.0, adaptive=True)[0]
    e10 = perturbation([10 * w], [g / 10], rho=2.0, adaptive=True)[0]
    torch.testing.assert_close(e10, 10 * e1, rtol=1e-12, atol=0)
    s1, s10 = (perturbation([v], [h], rho=2.0, adaptive=False)[0] for v, h in ((w, g),
                                                                                (10 * w, g / 10)))
    torch.testing.assert_close(s10, s1)  # plain SAM: the same e whatever the weights' scale


def test_zero_gradient_gives_no_perturbation():
    model = _model()
    opt = _sam(model, rho=2.0, adaptive=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    opt.first_step()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), before))


def test_state_dict_round_trip_resumes_exactly():
    # The base's momentum and the schedule's lr survive a checkpoint: 3 steps, save, 2 steps
    # equals 3 steps, reload into fresh objects, 2 steps.
    x, y = _data()

    def fresh():
        model = _model()
        opt = _sam(model, rho=0.5, adaptive=True)
        return model, opt, cosine_schedule(opt, total_steps=5, warmup_steps=1)

    def run(model, opt, sched, n):
        for _ in range(n):
            _engine_step(model, opt, x, y)
            sched.step()

    model, opt, sched = fresh()
    run(model, opt, sched, 3)
    # deep copies: state_dict() holds references to the live buffers (a checkpoint is a copy)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    run(model, opt, sched, 2)
    other, opt2, sched2 = fresh()
    other.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    assert "momentum_buffer" in next(iter(saved[1]["state"].values()))
    run(other, opt2, sched2, 2)
    assert opt2.param_groups is opt2.base.param_groups
    assert torch.equal(model.weight, other.weight) and torch.equal(model.bias, other.bias)
