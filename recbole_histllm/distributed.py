"""Multi-process training and evaluation under ``torchrun`` (one process per GPU, or CPU processes).

RecBole 1.2's own distributed mode is not used: it initialises NCCL only, wraps the model in
DistributedDataParallel, pads each rank's share of the evaluation rows (``DistributedSampler``)
and averages per-rank metric values weighted by row count, which is wrong for AUC and UAUC (and
counts padded rows twice). Here instead (see :class:`~recbole_histllm.trainer.LLMTrainer`):

* the process group comes from torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``/``MASTER_PORT``), backend ``ddp_backend`` (~ = nccl on CUDA, gloo on CPU);
  RecBole keeps ``single_spec: True`` and never sees a second process;
* training: every rank draws the same seeded row order, splits each global batch between ranks
  (:func:`shard`), weighs its loss by its share of the batch and sums the gradients of the trainable
  parameters over ranks (:func:`all_reduce_grads`) before each optimiser step: the update is the
  single-process one with the same ``stage{k}_batch_size`` (the global batch);
* evaluation: rank ``r`` scores rows ``r, r + W, ...`` (no padding), :func:`gather_shards` brings
  every row back to every rank in its original order, and metrics are computed once over all rows.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

# Ranks other than 0 wait at a barrier while rank 0 trains stage 0 (MF) alone: allow that long.
TIMEOUT = datetime.timedelta(hours=2)

T = TypeVar("T", np.ndarray, torch.Tensor)


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """``LOCAL_RANK`` set by torchrun (0 when not launched by it): the GPU index on this node."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: torch.device, backend: str | None = None) -> None:
    """Join torchrun's process group (once; no-op outside torchrun or with one process).

    ``backend``: nccl on CUDA devices, gloo on CPU when None.
    """
    if launched_world_size() <= 1 or is_initialized():
        return
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=TIMEOUT, **kwargs)
    atexit.register(dist.destroy_process_group)


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a data folder), the others after it finished."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(rows: T) -> T:
    """This rank's share of ``rows``: ``rows[rank::world]`` (the ranks' shares partition ``rows``)."""
    return rows[rank() :: world_size()]


def interleave(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`shard`: ``parts[r]`` holds rows ``r, r + W, ...``; returns all rows in order."""
    world = len(parts)
    dtype = next((p.dtype for p in parts if len(p)), parts[0].dtype)
    out = np.empty(sum(len(p) for p in parts), dtype=dtype)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def gather_shards(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every rank's :func:`shard` results, on every rank, back in row order (each row once)."""
    if world_size() == 1:
        return local
    parts: list[dict[str, np.ndarray] | None] = [None] * world_size()
    dist.all_gather_object(parts, local)
    return {key: interleave([part[key] for part in parts]) for key in local}


def all_reduce_sum(value: float, device: torch.device) -> float:
    """``value`` summed over ranks."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (e.g. randomly initialised weights)."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src)


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over ranks, one collective per (dtype, device).

    A rank without a gradient for a parameter (it scored no row of the batch) contributes zeros;
    a parameter no rank has a gradient for keeps ``grad = None`` (the optimiser then skips it,
    as in a single process).
    """
    if world_size() == 1 or not params:
        return
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has_grad)
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
    for p, flag in zip(params, has_grad.tolist()):
        if flag == 0:
            p.grad = None
