"""MoCo v2: InfoNCE-with-queue against a plain loop, queue, momentum encoder, shuffled BN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ssltk_moco import MoCo, moco_loss

from ssltk.distributed import randperm
from ssltk.interfaces import Batch

pytestmark = pytest.mark.numerics


def loop_infonce(q, k, queue, tau):
    """MoCo eq. (1), one query at a time: -log(e^{q.k+/t} / (e^{q.k+/t} + sum_j e^{q.n_j/t}))."""
    def unit(v):
        s = math.sqrt(sum(x * x for x in v))
        return [x / s for x in v]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    total = 0.0
    for qi, ki in zip(q, k):
        qi, ki = unit(qi), unit(ki)
        pos = math.exp(dot(qi, ki) / tau)
        neg = sum(math.exp(dot(qi, nj) / tau) for nj in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def fixed_inputs():
    """RNG-free: N = 3 queries/keys, K = 5 unit negatives, D = 4."""
    idx = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    queue = F.normalize(torch.cos(torch.arange(20, dtype=torch.float64).reshape(5, 4) * 0.7), dim=1)
    return torch.sin(idx + 1.0), torch.sin(idx + 1.3), queue


# loop_infonce(fixed_inputs(), tau), recorded when this test was written.
REFERENCE = {0.2: 0.4528988548, 0.07: 0.2770627675}


def small_config(**kw):
    return MoCo.Config(**{"proj_hidden_dim": 32, "proj_dim": 8, "queue_size": 10, **kw})


@pytest.mark.parametrize("tau", sorted(REFERENCE))
def test_reference_values(tau):
    q, k, queue = fixed_inputs()
    assert loop_infonce(q.tolist(), k.tolist(), queue.tolist(), tau) == pytest.approx(
        REFERENCE[tau], abs=1e-9)
    assert moco_loss(q, k, queue, tau).item() == pytest.approx(REFERENCE[tau], abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_loss_matches_plain_loop(seed):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(4 + seed, 6, generator=g, dtype=torch.float64) for _ in range(2))
    queue = F.normalize(torch.randn(7, 6, generator=g, dtype=torch.float64), dim=1)
    expected = loop_infonce(q.tolist(), k.tolist(), queue.tolist(), 0.2)
    assert moco_loss(q, k, queue).item() == pytest.approx(expected, rel=1e-10)


def test_no_gradient_flows_into_keys_or_queue():
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8, requires_grad=True)
    queue = F.normalize(torch.randn(6, 8), dim=1).requires_grad_()
    moco_loss(q, k, queue).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


def test_queue_advances_and_wraps(tiny_backbone, batch_factory):
    objective = MoCo(small_config(), backbone=tiny_backbone)  # K = 10, B = 4: not a multiple
    assert {"queue", "queue_ptr"} <= set(objective.state_dict())
    torch.testing.assert_close(objective.queue.norm(dim=1), torch.ones(10))
    expected_ptr = [4, 8, 2, 6]
    for step, ptr in enumerate(expected_ptr):
        before = objective.queue.clone()
        b = batch_factory(n=4, seed=step)
        objective(b)
        assert int(objective.queue_ptr) == ptr
        written = [(ptr - 4 + i) % 10 for i in range(4)]  # the 4 slots just filled, wrapping
        keys = objective.keys(b.views[1], torch.Generator().manual_seed(step))
        torch.testing.assert_close(objective.queue[written], keys)
        untouched = [i for i in range(10) if i not in written]
        torch.testing.assert_close(objective.queue[untouched], before[untouched])
        assert not torch.equal(objective.queue[written], before[written])


def test_negatives_are_only_enqueued_keys(tiny_backbone, batch_factory):
    """Regression: the random initial queue made queries collapse within 5 steps (moco.md)."""
    objective = MoCo(small_config(queue_size=12), backbone=tiny_backbone)
    b1, b2 = batch_factory(n=8, seed=0), batch_factory(n=8, seed=1)
    assert "queue_len" in objective.state_dict() and objective.negatives().shape == (0, 8)
    v1, v2 = b1.views
    q, k = objective.query(v1), objective.keys(v2, torch.Generator().manual_seed(0))
    out = objective(b1)  # first step: the batch's other keys are the negatives
    expected = sum(loop_infonce([q[i].tolist()], [k[i].tolist()],
                                [k[j].tolist() for j in range(8) if j != i], 0.2)
                   for i in range(8)) / 8
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert int(objective.queue_len) == 8
    keys1 = objective.queue[:8].clone()
    objective.eval()
    v1, v2 = b2.views
    q, k = objective.query(v1), objective._encode_key(v2)
    expected = loop_infonce(q.tolist(), k.tolist(), keys1.tolist(), 0.2)  # 8 negatives, not 12
    assert objective(b2).loss.item() == pytest.approx(expected, rel=1e-5)
    objective.train()
    objective(b2)
    objective(b1)
    assert int(objective.queue_len) == 12 and objective.negatives().shape == (12, 8)
    official = MoCo(small_config(queue_size=12, queue_warm_start=False), backbone=tiny_backbone)
    assert official.negatives().shape == (12, 8)  # the official random rows


def test_eval_forward_leaves_the_queue_alone(tiny_backbone, batch):
    objective = MoCo(small_config(), backbone=tiny_backbone).eval()
    before = objective.queue.clone()
    objective(batch)
    assert int(objective.queue_ptr) == 0 and torch.equal(objective.queue, before)


def test_batch_larger_than_queue_keeps_latest_keys(tiny_backbone):
    objective = MoCo(small_config(queue_size=3), backbone=tiny_backbone)
    keys = F.normalize(torch.randn(5, 8), dim=1)
    objective.queue_ptr.fill_(1)
    objective.enqueue(keys)
    assert sorted(objective.queue.tolist()) == sorted(keys[-3:].tolist())
    assert int(objective.queue_ptr) == 1


def test_momentum_update_formula_and_no_grad_to_key_encoder(tiny_backbone, batch):
    objective = MoCo(small_config(momentum=0.9), backbone=tiny_backbone)
    q_params = list(objective.backbone.parameters()) + list(objective.head.parameters())
    k_params = list(objective.key_backbone.parameters()) + list(objective.key_head.parameters())
    assert all(torch.equal(a, b) for a, b in zip(q_params, k_params))  # a copy at start
    opt = torch.optim.SGD([p for p in objective.parameters() if p.requires_grad], lr=0.1)
    assert all(not p.requires_grad for p in k_params)
    out = objective(batch)
    out.loss.backward()
    assert all(p.grad is None for p in k_params)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_backbone.parameters())
    opt.step()
    old_k = [p.clone() for p in k_params]
    new_q = [p.detach().clone() for p in q_params]
    objective.on_step_end()
    for pk, ok, pq in zip(k_params, old_k, new_q):
        torch.testing.assert_close(pk, 0.9 * ok + 0.1 * pq)
    assert any(not torch.equal(a, b) for a, b in zip(q_params, k_params))


def test_shuffled_bn_single_process(tiny_backbone, batch):
    objective = MoCo(small_config(shuffle_bn_splits=2), backbone=tiny_backbone)
    x = batch.views[1]
    keys = objective.keys(x, torch.Generator().manual_seed(3))
    # Same computation by hand: permute, BN statistics per half, un-permute.
    perm = randperm(8, torch.Generator().manual_seed(3), x.device)
    halves = [objective._encode_key(c) for c in x[perm].chunk(2)]
    by_hand = torch.empty_like(keys)
    by_hand[perm] = torch.cat(halves)
    torch.testing.assert_close(keys, by_hand)
    # BN statistics differ from the whole batch's in training mode...
    assert not torch.allclose(keys, objective._encode_key(x), atol=1e-4)
    # ...and the shuffle is invisible in eval mode (running statistics): order is restored.
    objective.eval()
    torch.testing.assert_close(objective.keys(x, torch.Generator().manual_seed(3)),
                               objective._encode_key(x))


def test_symmetric_loss_uses_both_views(tiny_backbone, batch):
    objective = MoCo(small_config(symmetric=True, queue_size=32, queue_warm_start=False),
                     backbone=tiny_backbone).eval()
    out = objective(batch)
    queue = objective.queue
    v1, v2 = batch.views
    l12 = moco_loss(objective.query(v1), objective._encode_key(v2), queue, 0.2)
    l21 = moco_loss(objective.query(v2), objective._encode_key(v1), queue, 0.2)
    torch.testing.assert_close(out.loss, 0.5 * (l12 + l21))
    objective.train()(batch)
    assert int(objective.queue_ptr) == 16  # both views' keys are enqueued


def test_output(tiny_backbone, batch):
    objective = MoCo(small_config(queue_size=16), backbone=tiny_backbone)
    out = objective(batch)
    assert out.embeddings.shape == (2, 8, 8) and set(out.logs) == {"loss", "acc"}
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(2, 8))
    assert torch.isfinite(out.loss) and 0.0 <= out.logs["acc"] <= 1.0


def test_loss_decreases(mlp_backbone, batch_factory):
    # 4 batches in turn, so the queue (2 batches) never holds the current samples' own keys.
    batches = [batch_factory(n=8, seed=s) for s in range(4)]
    objective = MoCo(small_config(queue_size=16, momentum=0.9), backbone=mlp_backbone)
    opt = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(24):
        out = objective(batches[step % 4])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        objective.on_step_end()
        losses.append(out.loss.item())
    # Step 0 contrasts with the batch's own keys (7 negatives), step 1 with 8: from step 2 on.
    early, late = sum(losses[2:6]) / 4, sum(losses[-4:]) / 4
    assert late < 0.6 * early, losses


def test_defaults_and_registry(registry, tiny_backbone):
    config = registry.config("objectives", "moco", {})
    assert (config.temperature, config.momentum, config.queue_size) == (0.2, 0.99, 1024)
    assert config.proj_output_norm and config.queue_warm_start  # docs/methods/moco.md
    assert (config.proj_hidden_dim, config.proj_dim, config.symmetric) == (2048, 128, False)
    objective = registry.create("objectives", "moco", {"queue_size": 7, "proj_hidden_dim": 16},
                                backbone=tiny_backbone, anchor=None, registry=registry)
    assert objective.queue.shape == (7, 128) and objective.n_views == 2
    out = objective(Batch(views=[torch.randn(4, 1, 8, 8, 8)] * 2))
    assert torch.isfinite(out.loss)


def test_loss_is_float32_under_autocast(tiny_backbone, batch):
    objective = MoCo(small_config(), backbone=tiny_backbone)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert objective.queue.dtype == torch.float32


def test_acc_counts_ties_as_misses(tiny_backbone):
    objective = MoCo(small_config(), backbone=tiny_backbone)
    q = torch.zeros(4, objective.config.proj_dim)
    q[:, 0] = 1.0  # collapsed: q = k = every queued key, so every logit is exactly 1 / tau
    _, acc = objective._contrast(q, q.clone(), q[:1].expand(10, -1).clone())
    assert acc == 0.0  # argmax of tied logits would have said 1.0
    k = F.normalize(torch.eye(4, objective.config.proj_dim), dim=1)
    _, acc = objective._contrast(k, k.clone(), -k[:1].expand(10, -1).clone())
    assert acc == 1.0
