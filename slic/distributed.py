"""torchrun/DDP plumbing: one process per GPU (NCCL) or per CPU worker (gloo), same code path.

A single plain `python` process is a world of size 1: every helper here then does nothing, so
the training code never branches on whether it is distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place: rank, number of processes, local rank and its device."""

    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is available, else CPU; 'cuda' without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("pretrain.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_world(device_name: str = "auto") -> World:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, local_rank, device)


def close_world() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from every rank in rank order, keeping gradients to the local part.

    Each rank then mines triplets over the global batch, as a single process with the whole batch
    would; the backward of the gather sends each rank its share of the gradient.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a list of one without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def gather_tensor(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from every rank in rank order, without gradients (labels, indices)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
