"""Multi-process training with ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node=N -m blocks train CONFIG`` starts N copies of ``blocks train``;
torchrun gives each its ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`setup` (called by :func:`blocks.engine.run.train`) reads them and joins the
process group: ``nccl`` on CUDA (each process on ``cuda:LOCAL_RANK``), ``gloo`` on CPU. Without
those variables (a plain ``blocks train``) nothing changes: one process, no process group.

The :class:`Distributed` object handed to the trainer says which process this is and offers the
few collectives the engine needs (barrier, broadcast of a Python object, a sum over processes).
With one process each of them is a no-op, so the engine's code is the same for both cases.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import torch

from blocks.errors import ConfigError

# How long a process waits for the others at a collective before giving up (rank 0 alone builds
# the teacher cache and evaluates on dev while the others wait). DISTILBLOCKS_DIST_TIMEOUT (seconds)
# overrides it.
DEFAULT_TIMEOUT_SECONDS = 3600


@dataclass
class Distributed:
    """This process's place in the job; ``world_size == 1`` is the ordinary single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # True when setup() created the process group (and teardown() ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        holder = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_gather(self, value) -> list:
        """Every rank's ``value``, in rank order (any picklable object)."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over every rank (in place, also returned)."""
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor


SINGLE = Distributed()
_GROUPS_CREATED = 0  # process groups setup() created in this process


def environment_world_size(environ=None) -> int:
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _timeout() -> datetime.timedelta:
    value = os.environ.get("DISTILBLOCKS_DIST_TIMEOUT")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        seconds = DEFAULT_TIMEOUT_SECONDS
    return datetime.timedelta(seconds=seconds)


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes (if any); returns it and this process's device.

    ``device`` is the config's device for a single process; with several processes on CUDA each
    one takes ``cuda:LOCAL_RANK`` instead.
    """
    world_size = environment_world_size()
    if world_size <= 1:
        return SINGLE, device
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 (a torchrun launch) but this torch build has no torch.distributed",
                          None, "/device")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process {rank} has LOCAL_RANK {local_rank} but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s); start at most that many processes "
                              f"per node (--nproc_per_node)", None, "/device")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl" if dist.is_nccl_available() else "gloo"
    else:
        backend = "gloo"
        if not dist.is_gloo_available():
            raise ConfigError("multi-process training on CPU needs the gloo backend, which this torch build "
                              "lacks", None, "/device")
    global _GROUPS_CREATED
    owns = False
    if dist.is_initialized():  # the caller set the group up already
        backend = dist.get_backend()
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        if _GROUPS_CREATED == 0:
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                    timeout=_timeout(), **kwargs)
        else:
            # train() called again in the same processes: the rendezvous store still holds the
            # previous group's keys, which the new group must not read; give it its own prefix
            store, rank, world_size = next(dist.rendezvous("env://", rank, world_size, timeout=_timeout()))
            store = dist.PrefixStore(f"distilblocks-{_GROUPS_CREATED}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                                    timeout=_timeout(), **kwargs)
        _GROUPS_CREATED += 1
        owns = True
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend,
                       owns_group=owns), device


def teardown(context: Distributed, finished: bool = False) -> None:
    """Leave the process group if :func:`setup` created it.

    ``finished``: every rank got here normally, so a last barrier is safe (after an error the
    other ranks may be gone: no barrier then).

    A gloo backend's worker threads release each finished collective (and its tensors, which
    takes the GIL) a moment after the waiting Python thread has gone on. If the interpreter is
    already shutting down by then, the process aborts ("terminate called without an active
    exception"), and DistributedDataParallel keeps the backend, and its threads, alive after
    ``destroy_process_group``. So this gives those threads the GIL for a moment before returning.
    """
    if not (context.owns_group and torch.distributed.is_initialized()):
        return
    try:
        if finished:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    except Exception:  # noqa: BLE001 - leaving a broken group must not hide the real error
        pass
    time.sleep(0.2)  # releases the GIL: the backend threads drop their last collectives now


def epoch_slices(global_batches: list[torch.Tensor], context: Distributed) -> list[torch.Tensor]:
    """This rank's share of each global batch: equal contiguous slices, one per rank.

    Every rank builds the same global batches (``batch_size * world_size`` examples, from the same
    generator), so rank ``r`` takes examples ``[r*k, (r+1)*k)`` of each, ``k = len(batch) //
    world_size``. Only the last global batch of an epoch can be ragged: its ``len % world_size``
    last examples are left out (and the whole batch when it has fewer examples than ranks), the
    same way on every rank, so that every rank takes the same number of steps and every step
    averages gradients over equally sized slices.
    """
    if not context.enabled:
        return global_batches
    size = context.world_size
    result = []
    for batch in global_batches:
        share = len(batch) // size
        if share == 0:
            continue
        result.append(batch[context.rank * share:(context.rank + 1) * share])
    return result


def batches_per_epoch(examples: int, batch_size: int, world_size: int) -> int:
    """Batches each rank takes per epoch (see :func:`epoch_slices`)."""
    global_size = batch_size * world_size
    full, rest = divmod(examples, global_size)
    return full + (1 if rest >= world_size else 0)
