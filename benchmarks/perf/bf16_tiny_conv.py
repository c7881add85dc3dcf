"""CPU bf16 autocast and convolutions whose input is smaller than their kernel.

torch 2.13's oneDNN bf16 kernels compute the weight gradient of such a convolution from
uninitialised memory. This script counts, for a few shapes, how many of ``--calls`` weight
gradients are wrong (non-finite, or more than 5 % of the largest entry away from the float32
gradient of the same bf16-rounded operands) under plain ``torch.autocast`` (what a user writes)
and under ssltk's ``runtime.autocast`` (those convolutions in float32), then times a training
step of the quickstart's encoder under both.

    python benchmarks/perf/bf16_tiny_conv.py             # 100 calls per shape
    OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default python benchmarks/perf/bf16_tiny_conv.py
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from ssltk.engine.runtime import Context, autocast
from ssltk.registry import get_registry

# (name, conv, input spatial size, stride, padding): kernel 3, 16 -> 32 channels, batch 4
SHAPES = [("conv3d 1^3, stride 2", F.conv3d, 1, 2, 1), ("conv3d 2^3, stride 1", F.conv3d, 2, 1, 1),
          ("conv2d 1^2, stride 2", F.conv2d, 1, 2, 1),
          ("conv_transpose3d 2^3", F.conv_transpose3d, 2, 1, 1),
          ("conv3d 4^3 (input >= kernel)", F.conv3d, 4, 2, 1)]


def plain(_precision, _ctx):
    return torch.autocast("cpu", dtype=torch.bfloat16)


def wrong_gradients(cast, conv, size: int, stride: int, padding: int, calls: int) -> int:
    torch.manual_seed(0)
    dims = 3 if conv in (F.conv3d, F.conv_transpose3d) else 2
    cin, cout = (32, 16) if conv is F.conv_transpose3d else (16, 32)
    weight = torch.randn(cout if conv is not F.conv_transpose3d else cin,
                         cin if conv is not F.conv_transpose3d else cout, *[3] * dims,
                         requires_grad=True)
    ctx = Context(device=torch.device("cpu"))
    wrong = 0
    for _ in range(calls):
        x = torch.randn(4, cin, *[size] * dims)
        w32 = weight.detach().bfloat16().float().requires_grad_()
        y32 = conv(x.bfloat16().float(), w32, stride=stride, padding=padding)
        grad_out = torch.randn_like(y32).bfloat16()
        (ref,) = torch.autograd.grad(y32, w32, grad_out.float())
        with cast("bf16", ctx):
            y = conv(x, weight, stride=stride, padding=padding)
        (got,) = torch.autograd.grad(y, weight, grad_out.to(y.dtype))
        err = (got.float() - ref).abs().max() / ref.abs().max()
        wrong += int(not bool(err < 0.05))
    return wrong


def step_time(cast, steps: int) -> float:
    torch.manual_seed(0)
    model = get_registry().build("backbones", {"name": "resnet10", "widen_factor": 0.5}, "b")
    x = torch.randn(16, 1, 32, 32, 32)
    ctx = Context(device=torch.device("cpu"))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with cast("bf16", ctx):
            loss = model(x).float().square().mean()
        loss.backward()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'shape':32s} {'torch.autocast':>16s} {'ssltk autocast':>16s}")
    for name, conv, size, stride, padding in SHAPES:
        counts = [wrong_gradients(cast, conv, size, stride, padding, args.calls)
                  for cast in (plain, autocast)]
        print(f"{name:32s} {counts[0]:>9d} wrong {counts[1]:>9d} wrong   (of {args.calls})")
    plain_s, ours_s = step_time(plain, args.steps), step_time(autocast, args.steps)
    print(f"resnet10 w0.5 train step, 16 x 32^3 (median of {args.steps}): torch.autocast "
          f"{plain_s:.3f} s, ssltk autocast {ours_s:.3f} s ({ours_s / plain_s:.2f}x)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
