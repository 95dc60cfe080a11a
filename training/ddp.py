"""Distributed data parallel helpers: torchrun-style env setup, and a spawn launcher (gloo on CPU)."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's env (RANK, WORLD_SIZE, ...); no-op for one process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":  # NCCL collectives run on the current device: one GPU per process
            import torch

            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=world)
        log.info("joined %s process group: rank %d of %d", backend, info.rank, world)
    return info


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every process when ``flag`` is true on any of them (so all stop together, none waits forever)."""
    if not info.enabled:
        return bool(flag)
    import torch
    import torch.distributed as dist

    device = f"cuda:{info.local_rank}" if dist.get_backend() == "nccl" else "cpu"  # NCCL takes GPU tensors only
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    import torch.distributed as dist

    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    fn(*args)


def launch(fn: Callable[..., Any], world: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``world`` spawned processes with torchrun-style env (for CPU/gloo use and tests)."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)
