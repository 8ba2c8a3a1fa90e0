"""More than one device: one run on several processes (``torchrun``, DistributedDataParallel), or the
folds of a cross-validation spread over devices (one process per device).

Under ``torchrun --nproc_per_node=N`` every process trains the same net on its own batches (rank ``r``
reads pass ``r`` of each iteration, see :class:`~agegender.training.data.BatchPlan`), gradients are averaged
(as Caffe's multi-GPU solver does: ``batch_size`` is per process), and only rank 0 writes checkpoints and
logs. The backend is NCCL on CUDA and gloo on the CPU (the CPU path is what the tests run)::

    torchrun --nproc_per_node=8 -m agegender.cli train --model gender_imdbwiki_vgg16 --fold 0 ...

:func:`run_on_devices` trains independent jobs (the folds) at the same time, one spawned process per
device (e.g. ``cuda:0``... ``cuda:7``; ``cpu`` works too), each process running its share in order.
"""

from __future__ import annotations

import inspect
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch

from ..errors import TrainingError

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class DistContext:
    """This process's place in a ``torchrun`` group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over the processes (a new tensor)."""
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (every process gets the same answer)."""
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (on every process)."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def init_distributed(device: str | None = None) -> DistContext | None:
    """Join the ``torchrun`` process group named by the environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``); None when not launched by torchrun. ``device`` "cpu" forces gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(f"process {rank} has local rank {local_rank} but this machine has "
                                f"{torch.cuda.device_count()} GPU(s)", hint="use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        target = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if use_cuda and "device_id" in inspect.signature(dist.init_process_group).parameters:
            # binds the NCCL communicator to this GPU at once (torch >= 2.3): barrier() and the object
            # collectives then never guess the device
            kwargs["device_id"] = target
        dist.init_process_group(backend=backend, **kwargs)
    log.info("process %d of %d (%s, %s)", rank, world_size, backend, target)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, device=target)


def shutdown_distributed(context: DistContext | None) -> None:
    """Leave the process group (after the last collective)."""
    if context is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def assign_to_devices(count: int, devices: Sequence[str]) -> list[list[int]]:
    """Job indices per device, round robin: 5 folds on 2 devices -> [[0, 2, 4], [1, 3]]."""
    if not devices:
        raise TrainingError("no devices given to spread the jobs over")
    shares: list[list[int]] = [[] for _ in devices]
    for index in range(count):
        shares[index % len(devices)].append(index)
    return shares


def _device_worker(fn: Callable[[J, str], R], device: str, jobs: list[tuple[int, J]], threads: int
                   ) -> list[tuple[int, R]]:
    # every worker gets its share of the cores: GPU workers too do host work (fillers, crops, decoding), and
    # 8 of them with a full thread pool each would oversubscribe the CPU
    torch.set_num_threads(max(1, threads))
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return [(index, fn(job, device)) for index, job in jobs]


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_on_devices(fn: Callable[[J, str], R], jobs: Sequence[J], devices: Sequence[str]) -> list[R]:
    """``[fn(job, device) ...]`` for every job, the jobs spread round robin over ``devices``, one spawned
    process per device running its jobs in order; results in job order. ``fn`` and the jobs must be
    picklable (a module-level function, dataclasses). The worker processes share the cores evenly."""
    devices = list(devices)
    shares = assign_to_devices(len(jobs), devices)
    workers = sum(1 for share in shares if share)
    threads = max(1, _usable_cores() // max(workers, 1))
    results: dict[int, R] = {}
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    busy = [(device, share) for device, share in zip(devices, shares) if share]
    with ProcessPoolExecutor(max_workers=len(busy), mp_context=context) as pool:
        futures = [pool.submit(_device_worker, fn, device, [(i, jobs[i]) for i in share], threads)
                   for device, share in busy]
        for future in futures:
            for index, result in future.result():
                results[index] = result
    return [results[i] for i in range(len(jobs))]


__all__ = ["DistContext", "assign_to_devices", "init_distributed", "run_on_devices", "shutdown_distributed"]
