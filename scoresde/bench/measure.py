"""Measurements around a cell: device-synchronised timing, one network evaluation, peak memory.

Peak memory is measured as follows, and the method is recorded with every result:

* ``cuda_max_allocated``: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus the memory allocated before the run (tensors the run itself created);
* ``rss_hwm``: on Linux CPUs, the process's peak resident set size (VmHWM) is reset through
  ``/proc/self/clear_refs`` before the run, and the increase of VmHWM over the resident size
  before the run is reported;
* ``ru_maxrss``: elsewhere, the increase of ``resource.getrusage().ru_maxrss`` (a lifetime peak:
  0 when an earlier cell already reached a higher peak; an underestimate).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import torch

__all__ = ["sync", "PeakMemory", "time_network_eval"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory a block adds; ``.mb`` and ``.method`` after exit."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb: float = float("nan")
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_max_allocated"
        elif _can_reset_hwm():
            self._base = _status_kb("VmRSS") or 0
            self.method = "rss_hwm"
        else:
            import resource

            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            self.method = "ru_maxrss"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.method == "cuda_max_allocated":
            sync(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif self.method == "rss_hwm":
            self.mb = max(0, (_status_kb("VmHWM") or 0) - self._base) / 1024
        else:
            import resource

            self.mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._base) / 1024


class TensorPeak:
    """Peak bytes of tensor storage that a block allocates and holds at once (any device; exact).

    A ``TorchDispatchMode`` sees every storage an op creates and a weak-reference finaliser sees it
    freed, so ``.mb`` is the high-water mark of the live tensor memory the block added: what the
    process RSS cannot show on the CPU, where the allocator reuses freed memory (a small sweep cell
    read 0.0 MB that way). Python-level cost per op: use it on an untimed run.
    """

    def __init__(self) -> None:
        self.mb: float = float("nan")
        self.method = "tensor_peak"

    def __enter__(self) -> "TensorPeak":
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self._live = self._peak = 0
        seen: set[int] = set()

        def freed(key: int, n: int) -> None:
            seen.discard(key)
            tracker._live -= n

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and not t.is_meta:
                        st = t.untyped_storage()
                        key = id(st)
                        if key not in seen:
                            seen.add(key)
                            n = st.nbytes()
                            tracker._live += n
                            tracker._peak = max(tracker._peak, tracker._live)
                            weakref.finalize(st, freed, key, n)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        self.mb = self._peak / 2**20


def time_network_eval(model: Callable, x: torch.Tensor, t: float, *, min_repeats: int = 5, min_time: float = 0.05,
                      max_repeats: int = 1000) -> float:
    """Median seconds of one model call ``model(x, t)`` on this batch, device-synchronised.

    Two warm-up calls, then at least ``min_repeats`` timed calls and more until ``min_time``
    seconds have been timed (short calls are timed many times). The call is the ScoreModel's:
    network + parameterisation conversion (+ its finiteness check)."""
    device = x.device
    tt = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=device)
    with torch.no_grad():
        for _ in range(2):
            model(x, tt)
        sync(device)
        times: list[float] = []
        while len(times) < min_repeats or (sum(times) < min_time and len(times) < max_repeats):
            t0 = time.perf_counter()
            model(x, tt)
            sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment() -> dict[str, Any]:
    """Where the numbers were measured."""
    import platform

    env = {"torch": torch.__version__, "host": platform.node(), "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
