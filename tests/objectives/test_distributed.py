"""ssltk.distributed: 2 gloo processes on CPU reproduce single-process losses and gradients."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ssltk_moco import MoCo
from ssltk_simclr import nt_xent_loss
from ssltk_yaware import yaware_loss
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ssltk import distributed as D
from ssltk.interfaces import Backbone, Batch

pytestmark = pytest.mark.numerics

WORLD, N, DIM = 2, 8, 6  # global batch of 8: 4 per rank


class _TinyMLP(Backbone):
    """``(B, 1, 2, 2, 2) -> (B, 4)`` with a BatchNorm, for MoCo's shuffled BN across ranks."""

    name = "tiny_mlp_dist_test"

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
        self.out_dim, self.feature_channels, self.feature_strides = 4, (1,), (1,)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        return [x]


def global_inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "z1": torch.randn(N, DIM, generator=g, dtype=torch.float64),
        "z2": torch.randn(N, DIM, generator=g, dtype=torch.float64),
        "age": 20 + 60 * torch.rand(N, generator=g, dtype=torch.float64),
        "x": torch.randn(2 * N, DIM, generator=g),  # inputs of the DDP linear model, 2 views
        "vol": torch.randn(N, 1, 2, 2, 2, generator=g),
    }


def _input_grads(loss_fn, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = loss_fn(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


def _ddp_param_grads(model: nn.Module, x1: Tensor, x2: Tensor, gather) -> list[Tensor]:
    out = model(torch.cat([x1, x2]))  # one forward per step, as DDP expects
    z1, z2 = out.chunk(2)
    nt_xent_loss(gather(z1), gather(z2)).backward()
    return [p.grad.clone() for p in model.parameters()]


def _moco_state(x_local: Tensor) -> tuple[Tensor, Tensor, int]:
    torch.manual_seed(0)
    moco = MoCo(MoCo.Config(proj_hidden_dim=8, proj_dim=4, queue_size=12), backbone=_TinyMLP())
    keys = moco.keys(x_local, torch.Generator().manual_seed(5))
    moco(Batch(views=[x_local, x_local], generator=torch.Generator().manual_seed(5)))
    return keys, moco.queue.clone(), int(moco.queue_ptr)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        inp, b = global_inputs(), N // WORLD
        local = slice(rank * b, (rank + 1) * b)
        z1, z2 = inp["z1"][local], inp["z2"][local]
        age_all = D.concat_all_gather(inp["age"][local])
        res = {"rank": D.rank(), "world": D.world_size(), "age_all": age_all}
        res["simclr"] = _input_grads(
            lambda a, c: nt_xent_loss(D.gather_with_grad(a), D.gather_with_grad(c)), z1, z2)
        res["yaware"] = _input_grads(
            lambda a, c: yaware_loss(D.gather_with_grad(a), D.gather_with_grad(c),
                                     labels=age_all), z1, z2)
        torch.manual_seed(0)
        model = DistributedDataParallel(nn.Linear(DIM, 5))
        x1, x2 = inp["x"][:N][local], inp["x"][N:][local]
        res["ddp"] = _ddp_param_grads(model, x1, x2, D.gather_with_grad)
        res["moco"] = _moco_state(inp["vol"][local])
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _check_loss_and_grads(ranks, key, loss_fn):
    inp, b = global_inputs(), N // WORLD
    loss, g1, g2 = _input_grads(loss_fn, inp["z1"], inp["z2"])  # one process, whole batch
    for r, res in enumerate(ranks):
        r_loss, r_g1, r_g2 = res[key]
        torch.testing.assert_close(r_loss, loss, rtol=1e-12, atol=1e-12)
        # The gather's backward returns d(sum over ranks of each rank's loss)/dx: here W times the
        # single-process gradient, which DDP's averaging over W ranks divides back out.
        torch.testing.assert_close(r_g1 / WORLD, g1[r * b:(r + 1) * b], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r_g2 / WORLD, g2[r * b:(r + 1) * b], rtol=1e-10, atol=1e-12)


def test_rank_world_and_gather(ranks):
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    for res in ranks:
        torch.testing.assert_close(res["age_all"], global_inputs()["age"])


def test_simclr_loss_and_input_grads_match_single_process(ranks):
    _check_loss_and_grads(ranks, "simclr", nt_xent_loss)


def test_yaware_loss_and_input_grads_match_single_process(ranks):
    age = global_inputs()["age"]
    _check_loss_and_grads(ranks, "yaware", lambda a, c: yaware_loss(a, c, labels=age))


def test_ddp_parameter_grads_equal_single_process(ranks):
    inp = global_inputs()
    torch.manual_seed(0)
    model = nn.Linear(DIM, 5)
    expected = _ddp_param_grads(model, inp["x"][:N], inp["x"][N:], lambda z: z)
    for res in ranks:
        for got, want in zip(res["ddp"], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_moco_shuffled_bn_across_ranks_and_global_enqueue(ranks):
    # By hand: rank 0 draws perm; rank r encodes global rows perm[r*B:(r+1)*B] (BN statistics on
    # those rows only); each key goes back to its own row.
    vol, b = global_inputs()["vol"], N // WORLD
    torch.manual_seed(0)
    moco = MoCo(MoCo.Config(proj_hidden_dim=8, proj_dim=4, queue_size=12), backbone=_TinyMLP())
    perm = D.randperm(N, torch.Generator().manual_seed(5), vol.device)
    expected = torch.empty(N, 4)
    for r in range(WORLD):
        rows = perm[r * b:(r + 1) * b]
        expected[rows] = moco._encode_key(vol[rows])
    keys = torch.cat([res["moco"][0] for res in ranks])
    torch.testing.assert_close(keys, expected)
    for res in ranks:
        _, queue, ptr = res["moco"]
        assert ptr == N  # every rank enqueued the global batch of keys
        torch.testing.assert_close(queue[:N], expected)
        torch.testing.assert_close(queue[N:], moco.queue[N:])


def test_single_process_fallbacks():
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1
    x = torch.randn(5, 3, requires_grad=True)
    assert D.gather_with_grad(x) is x
    gathered = D.concat_all_gather(x)
    assert not gathered.requires_grad and torch.equal(gathered, x.detach())
    shuffled, idx = D.batch_shuffle(x, torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, x.detach())
    torch.testing.assert_close(D.batch_unshuffle(shuffled, idx), x.detach())

