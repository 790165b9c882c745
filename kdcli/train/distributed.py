"""One run over several processes (and GPUs, and nodes) with PyTorch's DistributedDataParallel,
started by `torchrun` (or `srun torchrun` across nodes). Without torchrun nothing changes.

The process group comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT): NCCL on CUDA, gloo on the CPU. The global batch stays
--batch-size: every step each process takes its slice of the same seeded global batch (the
batch order and augmentation generators are the same in every process), weighted so that the
averaged gradient is the global batch's, so a run over W processes follows the batches of a
one-process run and a KD student and its label twin stay paired. Batch norm normalises each
process's slice (no SyncBN: the statistics of B/W samples, as one GPU of B/W would; SyncBN
costs a collective per layer per step), with rank 0's running statistics kept.

Rank 0 alone writes the run dir; the others train, and read the checkpoint on a resume. Every
collective has a timeout (KDCLI_DDP_TIMEOUT seconds, default 600), so a process waiting on a
rank that died fails instead of hanging; torchrun itself stops the other ranks when one exits
with an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from kdcli.errors import ConfigError

DEFAULT_TIMEOUT_S = 600
FINAL_WAIT_S = 7 * 24 * 3600  # the closing barrier (a CPU group of its own): no timeout in practice


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self) -> dict:
        return {"size": self.size, "backend": self.backend}


_world = World()
_final = None  # the closing barrier's process group


def world() -> World:
    return _world


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str) -> World:
    """Join torchrun's process group (once per process); `device` is --device ('auto', 'cpu',
    'cuda', 'cuda:N'): CUDA processes use NCCL on GPU LOCAL_RANK, CPU ones gloo."""
    global _world
    if _world.distributed or not launched():
        return _world
    import torch.distributed as dist

    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE is set but RANK is not: start several processes with torchrun "
                          "(torchrun --nproc-per-node N kdcli …)") from None
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    try:
        timeout = float(os.environ.get("KDCLI_DDP_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise ConfigError(f"KDCLI_DDP_TIMEOUT={os.environ['KDCLI_DDP_TIMEOUT']!r}: expected seconds") from None
    if device.startswith("cuda:"):
        raise ConfigError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                          "use --device cuda (or auto)")
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    global _final
    # the end of a run: the other ranks wait while rank 0 evaluates and writes, however long
    _final = dist.new_group(backend="gloo", timeout=timedelta(seconds=FINAL_WAIT_S))
    _world = World(rank, size, local, backend)
    return _world


def device_for(name: str) -> str:
    """--device under torchrun: each CUDA process on its own GPU (LOCAL_RANK)."""
    if _world.distributed and _world.backend == "nccl" and name in ("auto", "cuda"):
        return f"cuda:{_world.local_rank}"
    return name


def barrier() -> None:
    if _world.distributed:
        import torch.distributed as dist

        dist.barrier()


def any_of(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag, true if it is true in any process (one small all-reduce)."""
    if not _world.distributed:
        return flags
    import torch.distributed as dist

    t = torch.tensor([int(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the processes, in place."""
    if _world.distributed:
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t)


def gather_objects(obj) -> list:
    """`obj` of every process, in rank order (small objects: RNG states)."""
    if not _world.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * _world.size
    dist.all_gather_object(out, obj)
    return out


def slice_of(pos: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This process's part of a global batch's sample positions (tensor_split: sizes differ by
    at most one), and how many rows it really holds: a process left without a sample (a short
    last batch, fewer samples than processes) takes the first sample with weight 0."""
    if not _world.distributed:
        return pos, len(pos)
    mine = torch.tensor_split(pos, _world.size)[_world.rank]
    return (mine, len(mine)) if len(mine) else (pos[:1], 0)


def stop() -> None:
    """The end of a command: wait for every process (one that left while another still used the
    group would break it), in a gloo group of its own whose timeout outlasts rank 0's final
    evaluation and writes (torchrun ends the waiting processes if rank 0 fails). The group ends
    with the process: destroy_process_group at exit made a gloo process abort ("terminate called
    without an active exception") in about one run in eight here, torch 2.14.1."""
    if _world.distributed:
        import torch.distributed as dist

        dist.barrier(group=_final)
