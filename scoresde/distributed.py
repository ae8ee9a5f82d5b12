"""Devices and ``torch.distributed``: the one home of the process-group set-up (trainer, bench, sampling).

Under ``torchrun`` the environment holds RANK, WORLD_SIZE and LOCAL_RANK; :func:`env` reads them,
:func:`pick_device` turns a device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...) into a
checked ``torch.device`` for the local rank, and :func:`init` starts the process group once
(NCCL on CUDA, gloo otherwise).
"""

from __future__ import annotations

import datetime
import os

import torch

__all__ = ["env", "pick_device", "init", "shutdown", "is_distributed"]


def env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return env()[1] > 1


def pick_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK if CUDA is available, else cpu; a bare ``cuda`` -> cuda:LOCAL_RANK.

    Raises ValueError naming the device for a name torch does not know or a device this machine does
    not have (CUDA on a CPU-only build, an index past the device count).
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={name!r} is not a device torch knows ({err}); accepted: auto, cpu, cuda, cuda:N, "
                         "mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}: CUDA is not available on this machine (torch {torch.__version__}); "
                             "use device='cpu' or 'auto'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={name!r}: MPS is not available on this machine; use device='cpu' or 'auto'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} is not supported; accepted: auto, cpu, cuda, cuda:N, mps")
    return dev


def init(device: torch.device | str = "cpu", *, timeout: datetime.timedelta | None = None) -> tuple[int, int]:
    """Start the process group under torchrun (once) and return (rank, world); (0, 1) outside torchrun.

    ``timeout``: how long collectives wait (a benchmark's shards may be very unequal).
    """
    rank, world, _ = env()
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend=backend, **kw)
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Tear down the process group if there is one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
