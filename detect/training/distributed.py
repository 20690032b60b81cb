"""Distributed data parallel through torchrun: process group set-up and small helpers.

``torchrun --nproc_per_node N tools/train.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; gloo is used
on CPU, nccl on GPU. Only rank 0 writes files.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes (no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over processes (for logging losses)."""
    if dist.is_initialized():
        values = values.detach().to(_comm_device(), copy=True)
        dist.all_reduce(values)
        values /= world_size()
    return values


def gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (pickled; for small states)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _comm_device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_max(value: float) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())
