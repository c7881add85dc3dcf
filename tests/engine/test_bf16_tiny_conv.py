"""CPU bf16 autocast: a convolution whose input is smaller than its kernel runs in float32.

torch 2.13's oneDNN bf16 weight gradient of such a convolution is computed from uninitialised
memory (NaN or values off by 10^36; benchmarks/perf/bf16_tiny_conv.py counts 90-100 wrong of
100 under plain torch.autocast). It made SAM's bf16 test diverge on some CPUs and orders.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssltk.engine.runtime import Context, CpuTinyConvsInFloat32, autocast

pytestmark = pytest.mark.numerics
CPU = Context(device=torch.device("cpu"))


def _weight_grad_errors(conv, x_shape, w_shape, calls=20, **kw):
    torch.manual_seed(0)
    weight = torch.randn(*w_shape, requires_grad=True)
    errors = []
    for _ in range(calls):
        x = torch.randn(*x_shape)
        w32 = weight.detach().bfloat16().float().requires_grad_()
        y32 = conv(x.bfloat16().float(), w32, **kw)
        grad_out = torch.randn_like(y32).bfloat16()
        (ref,) = torch.autograd.grad(y32, w32, grad_out.float())
        with autocast("bf16", CPU):
            y = conv(x, weight, **kw)
        (got,) = torch.autograd.grad(y, weight, grad_out.to(y.dtype))
        errors.append(float((got.float() - ref).abs().max() / ref.abs().max()))
    return errors


@pytest.mark.parametrize("conv, x_shape, w_shape, kw", [
    (F.conv3d, (4, 16, 1, 1, 1), (32, 16, 3, 3, 3), {"stride": 2, "padding": 1}),
    (F.conv3d, (4, 16, 2, 2, 2), (32, 16, 3, 3, 3), {"stride": 1, "padding": 1}),
    (F.conv2d, (4, 16, 1, 1), (32, 16, 3, 3), {"stride": 2, "padding": 1}),
    (F.conv_transpose3d, (4, 32, 2, 2, 2), (32, 16, 3, 3, 3), {"stride": 1, "padding": 1}),
])
def test_weight_gradients_of_convolutions_smaller_than_their_kernel_are_right(
        conv, x_shape, w_shape, kw):
    errors = _weight_grad_errors(conv, x_shape, w_shape, **kw)
    # float32 on the unrounded operands against the float32 gradient of the bf16-rounded ones:
    # bf16 rounding apart (< 1 %); the broken kernel is off by up to 10^36 or NaN
    assert max(errors) < 0.05


def test_larger_inputs_stay_in_bf16():
    x, w = torch.randn(2, 4, 4, 4, 4), torch.randn(8, 4, 3, 3, 3)
    with autocast("bf16", CPU):
        assert F.conv3d(x, w, padding=1).dtype == torch.bfloat16
        assert F.conv3d(x[..., :2, :2, :2], w, padding=1).dtype == torch.float32
        assert F.conv3d(x, w, padding=1, dilation=2).dtype == torch.float32  # extent 5 > 4
    assert not any(isinstance(m, CpuTinyConvsInFloat32)
                   for m in torch.overrides._get_current_function_mode_stack())
