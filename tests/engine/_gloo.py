"""Two-process (gloo) pretraining on CPU for the distributed tests: a free port and the worker
that ``torch.multiprocessing.start_processes`` runs on each rank."""

from __future__ import annotations

import os
import socket

import torch

from ssltk.engine.pretraining import pretrain
from ssltk.engine.runs import PretrainRun


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, run_json: str, out: str) -> None:
    """Rank ``rank`` of ``world``: pretrain the run (JSON) into ``out``."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        pretrain(PretrainRun.model_validate_json(run_json), out, device="cpu")
    finally:
        torch.distributed.destroy_process_group()
