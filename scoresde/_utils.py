"""Small shared helpers: broadcasting, float64 time arithmetic, argument checks."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so that a (B,) tensor broadcasts against (B, *D)."""
    if v.ndim > ndim:
        raise ValueError(f"append_dims: tensor has {v.ndim} dims, more than the target {ndim}")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_time(t: Any, *, device: torch.device | None = None) -> Tensor:
    """Turn a float, array or tensor of times into a float64 tensor (time arithmetic is float64)."""
    if isinstance(t, Tensor):
        return t.to(device=device if device is not None else t.device, dtype=torch.float64)
    return torch.as_tensor(t, dtype=torch.float64, device=device)


def batch_time(t: Any, batch: int, device: torch.device, name: str = "t") -> Tensor:
    """Broadcast a scalar or (B,) time to a (B,) float64 tensor, checking the shape."""
    t = as_time(t, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(
            f"{name} must be a scalar or a 1-D tensor of the batch size {batch}; got shape {tuple(t.shape)}"
        )
    return t


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise a ValueError naming the argument and the accepted values."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of the accepted values: {', '.join(map(repr, choices))}")


def umask() -> int:
    """The process's file-creation mask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically: temp file in the same folder, fsync, rename.

    The file gets the ordinary mode ``0o666 & ~umask`` (``mkstemp`` alone would make it 0600), so
    every file the project writes has the same permissions as one made by ``open(path, "w")``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a quota, a file-size limit: say which file, and that nothing was replaced
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(err.errno, f"cannot write {path!r} ({len(data):,} bytes): {err.strerror or err}; nothing was "
                                 "replaced (a previous file there is unchanged)") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class FolderLock:
    """An exclusive, non-blocking lock on an output folder (``fcntl.flock`` on a lock file in it).

    Two processes that would write the same folder (two sweeps, two trainings) cannot both hold it:
    the second gets a ValueError naming the holder (pid, host, start time). The operating system
    releases the lock when its process ends, even by SIGKILL, so a killed run never leaves the folder
    locked. ``name`` distinguishes locks in one folder (e.g. one per rank of a sharded sweep).
    """

    def __init__(self, folder: str | os.PathLike, name: str = ".scoresde-lock", *, what: str = "folder"):
        self.path = os.path.join(os.fspath(folder), name)
        self.folder, self.what, self._fh = os.fspath(folder), what, None

    def __enter__(self) -> "FolderLock":
        import fcntl
        import json
        import socket
        import time

        os.makedirs(self.folder, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ValueError(f"{self.what} {self.folder!r} is in use by another scoresde process ({holder}); wait for "
                             "it to finish, or choose another output folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
