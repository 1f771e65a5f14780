"""Data parallelism for both training loops: one code path for one process and for many GPUs or nodes.

Launcher: ``torchrun``. It ships with torch, so there is no extra dependency, and ``accelerate launch`` and SLURM
scripts that start torchrun set the same variables. What accelerate would add (device placement, a DDP wrapper,
mixed precision) is what the loops must control themselves to reproduce the single-process run: which noise each
rank sees and when gradients are averaged; so we use the launcher alone. Each process reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` and joins the process group the first time a stage asks for ``world()``; without
those variables (or with ``WORLD_SIZE=1``) it is a single process and nothing here does anything, so the
single-process results stay bitwise what they were.

How a step is split (``steps.py``):

- Noise. Every process keeps the same training generator (seeded from the run seed, the same on every rank) and
  draws the noise of the whole global batch, then takes its rows with ``shard``. The union of the ranks' slices is
  exactly the single-process batch, so N processes compute the single-process update up to the order of float
  additions, and the checkpointed training RNG (the loops' CPU generator) is the global batch's: a run resumes at
  any world size that divides the batch. Drawing the global batch on every rank costs one ``randn`` of the global
  size per draw, small next to the networks at our scales (not measured at ImageNet-64 batch sizes, where it is
  CPU work on every rank).
- Gradients. Each rank's loss is the mean over its equal share, so the average over ranks of the gradients is the
  gradient of the global mean. ``sync_grads`` all-reduces them after ``backward`` and before every optimizer step
  (generator and fake score in stage 2, the degrading copy in stage 1). We reduce explicitly rather than wrapping
  modules in ``DistributedDataParallel``: the generator runs twice per step with DMD's regression term, SiD
  back-propagates through frozen copies, and state-dict names stay those of the single-process run. The price:
  the reduction does not overlap the backward pass as DDP's bucketed hooks do.
- Seeds. ``rank_seed`` derives the seed of each rank's global torch RNG (dropout in the EDM networks draws from it)
  from the run seed and the rank; rank 0 keeps the run seed itself. ``seed_update`` reseeds that RNG before every
  update from (seed, rank, step), so a resumed run draws the dropout masks of an uninterrupted one. With dropout
  on, N processes therefore match one process in distribution, not bit for bit.
- Files. Only the main process (rank 0) writes logs, checkpoints, snapshots, path nodes and metrics, and it alone
  holds the run folder's lock. Evaluation (``metric_fn``, ``probe_fn``) runs on the main process only, on the full
  evaluation set, while the other ranks wait at their next all-reduce. Checkpoints hold the global state (weights,
  optimizer moments, the shared RNG), identical on every rank, and every rank reads them on resume: several nodes
  need a run folder on a shared file system. Before each checkpoint ``check_in_sync`` compares the ranks' weights
  and stops the run if they ever differ.
- Devices. Under NCCL each rank trains on its GPU (``device``). The training RNG is the loops' CPU generator, as
  in one process: noise is drawn on the CPU and moved (``steps.draw_latents``), so a GPU run draws the numbers a
  CPU run draws and a checkpoint resumes on either. A rank waits at most
  ``DISBACK_DIST_TIMEOUT_MIN`` minutes (default 60) at a collective, e.g. while the main process evaluates.

``bf16`` (``autocast``): the networks' forward passes and losses under ``torch.autocast`` in bfloat16, weights,
optimizer state and gradient reduction in float32.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

TIMEOUT_ENV = "DISBACK_DIST_TIMEOUT_MIN"  # minutes a rank waits at a collective (the main process's evaluation)
BUCKET = 1 << 24  # gradient elements per all-reduce


@dataclass(frozen=True)
class World:
    rank: int          # this process, 0 .. size - 1; rank 0 is the main process
    size: int          # number of processes
    local_rank: int    # this process on its node: picks its GPU
    backend: str       # "nccl" (CUDA), "gloo" (CPU), or "none" for a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD: World | None = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: must be an integer (set by torchrun)") from None


def world() -> World:
    """This process's place in the run; joins the process group (once) when a launcher started several."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        _WORLD = World(0, 1, 0, "none")
        return _WORLD
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank}: must be in [0, WORLD_SIZE={size})")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=_env_int(TIMEOUT_ENV, 60))
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timeout)
    _WORLD = World(rank, size, local_rank, backend)
    return _WORLD


def shutdown() -> None:
    """Leave the process group (the end of a launched script); ``world()`` would join again."""
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = None


def is_main() -> bool:
    """True on the process that writes files (rank 0, or the only process)."""
    return world().is_main


def barrier() -> None:
    """Wait for every process (no-op for one)."""
    if world().distributed:
        dist.barrier()


def device(teacher: torch.nn.Module) -> torch.device:
    """Where a stage trains: this rank's GPU when several processes run on GPUs, else where ``teacher`` is."""
    w = world()
    if w.backend == "nccl":
        return torch.device("cuda", w.local_rank)
    return next(teacher.parameters()).device


def rank_seed(seed: int) -> int:
    """Seed of this rank's global torch RNG: ``seed`` itself on rank 0, a hash of (seed, rank) elsewhere."""
    rank = world().rank
    if rank == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{rank}".encode()).digest()[:8], "little") >> 1


def seed_update(seed: int, step: int) -> None:
    """Seed this rank's global torch RNG (dropout in the EDM networks draws from it) for update ``step`` of a run
    with ``seed``: a hash of (seed, rank, step), so the masks of an update depend on nothing before it. A resumed run
    therefore draws the masks an uninterrupted one draws (the checkpoints hold the loops' own CPU generator, not this
    one), and whatever an evaluation or probe draws between updates never reaches training."""
    digest = hashlib.sha256(f"{rank_seed(seed)}/update/{step}".encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def shard(*tensors):
    """This rank's rows of each global-batch tensor (``None`` passes through); one process gets them whole."""
    w = world()
    if not w.distributed:
        return tensors
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        if len(t) % w.size:
            raise ValueError(f"batch={len(t)}: must be divisible by the number of processes ({w.size})")
        n = len(t) // w.size
        out.append(t[w.rank * n:(w.rank + 1) * n])
    return tuple(out)


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over processes of a (detached) tensor, e.g. each rank's loss; itself for one process."""
    if not world().distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world().size


@torch.no_grad()
def sync_grads(module: torch.nn.Module) -> None:
    """Average ``module``'s gradients over processes (call after ``backward``, before the optimizer step).

    Parameters without a gradient are skipped; every rank runs the same graph, so they are the same on all ranks.
    """
    w = world()
    if not w.distributed:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    for dtype in sorted({g.dtype for g in grads}, key=str):
        group = [g for g in grads if g.dtype == dtype]
        start = 0
        while start < len(group):
            bucket, size = [], 0
            while start < len(group) and (not bucket or size + group[start].numel() <= BUCKET):
                bucket.append(group[start])
                size += group[start].numel()
                start += 1
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= w.size
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()


def check_in_sync(modules: dict) -> None:
    """Raise if the processes' copies of ``modules`` ({name: module}) differ (they never should)."""
    if not world().distributed:
        return
    from .checkpoint import fingerprint

    mine = {name: fingerprint(m) for name, m in modules.items()}
    every = [None] * world().size
    dist.all_gather_object(every, mine)
    for rank, theirs in enumerate(every):
        bad = sorted(name for name in mine if theirs[name] != mine[name])
        if bad:
            raise RuntimeError(f"rank {rank} holds other weights than rank {world().rank} for {bad}: the "
                               f"processes have diverged (were they started from the same teacher and config?)")


def autocast(enabled: bool, device_type: str):
    """``torch.autocast`` in bfloat16 when ``enabled``, else a context that does nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
