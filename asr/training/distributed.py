"""Data-parallel plumbing for the trainer: the torchrun environment and a few collectives.

``torchrun`` (``python -m torch.distributed.run``) starts one process per device and sets
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; on several nodes
it sets them for every node. ``Dist.from_env`` reads them (a plain ``python`` run is one process
of rank 0) and ``Dist.init`` joins the process group: NCCL when training on CUDA, gloo on CPU.
Every helper here is a no-op in a single process, so the trainer has one code path.

CPU threads: torchrun sets ``OMP_NUM_THREADS=1`` per process; for fewer processes than cores
raise ``OMP_NUM_THREADS`` (torch's and the transducer losses' numba threads follow it, see
``kernels``; ``--set threads=N`` alone raises torch's only). Measured on the 2-core VM, the mini Conformer hybrid pruned TDT+CTC, 60 steps of
a 60 s global batch: one process with 2 threads 42.0 s; two processes with 1 thread and 30 s
each 39.3 s (36.6 s without data-loader workers); the same two processes before numba followed
``OMP_NUM_THREADS`` 401 s (each numba pool had a thread per core spinning between kernels).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Dist"]

log = logging.getLogger(__name__)


@dataclass
class Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        def num(name: str, default: int) -> int:
            value = os.environ.get(name, "")
            try:
                return int(value) if value else default
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from None

        world = num("WORLD_SIZE", 1)
        rank = num("RANK", 0)
        local = num("LOCAL_RANK", rank)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad torchrun environment: WORLD_SIZE={world}, RANK={rank}")
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if world > 1 and not os.environ.get(v)]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} without {', '.join(missing)}: start the processes with torchrun, "
                             f"e.g. torchrun --standalone --nproc_per_node {world} -m asr.cli train ...")
        return cls(world, rank, local)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The device of this process: ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is there, else CPU."""
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(requested)
        if dev.type == "cuda" and dev.index is not None and self.enabled:
            raise ValueError(f"device {requested!r} names one GPU, but torchrun started {self.world_size} processes: use "
                             "device 'cuda' (or 'auto'), and each process takes cuda:LOCAL_RANK "
                             "(choose the GPUs with CUDA_VISIBLE_DEVICES)")
        if dev.type == "cuda" and not torch.cuda.is_available():
            why = "is built without CUDA" if torch.version.cuda is None else "sees no GPU"
            raise ValueError(f"device {requested!r}: this torch ({torch.__version__}) {why}; use device 'cpu' or 'auto'")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return dev

    def init(self, device: torch.device, timeout_minutes: float = 120.0) -> None:
        """Join the process group (NCCL on CUDA, gloo otherwise); nothing in a single process."""
        if not self.enabled or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
        log.info("rank %d of %d (local rank %d) joined the %s process group", self.rank, self.world_size, self.local_rank, backend)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Element-wise logical or over ranks: every rank takes the same branch."""
        if not self.enabled:
            return [bool(f) for f in flags]
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.broadcast(t, src=0)
        return t
