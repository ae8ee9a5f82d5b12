"""Checkpoints: safetensors weights + JSON state and config; atomic; rebuilt through whitelists.

A checkpoint is a directory::

    model.safetensors      net weights ("net.<name>") and EMA weights ("ema.<name>")
    optimizer.safetensors  the optimizer's state tensors, flattened ("state.<param>.<key>")
    config.json            all that rebuilds the model and resumes training: net name + kwargs,
                           SDE config, ScoreModel config, loss, data + scaler, trainer settings,
                           scoresde version, format tag and version
    state.json             step, RNG states (lists of bytes), LR schedule, loss history, the plain
                           part of the optimizer state, and the size + sha256 of every other file

It is written into a hidden sibling ``.tmp-...`` folder (each file fsynced, ``state.json`` last)
and renamed into place, so a process killed mid-write leaves either the previous checkpoint or the
new one, never a mixture. A training run keeps ``step-<N>`` checkpoints in its run folder and a
``latest`` file naming the newest; ``latest`` is rewritten (atomically) only after the new
checkpoint is complete. Loading accepts a run folder (follows ``latest``) or a checkpoint folder.

Loading never executes code: JSON and safetensors only (no pickle), the network is rebuilt by
registry name (:data:`scoresde.nets.NETS`) and the SDE by :func:`scoresde.sde.sde_from_config`.
Anything corrupt, truncated or foreign raises :class:`CheckpointError` naming the file.

A checkpoint is untrusted input. Before anything is allocated, :func:`load_checkpoint` checks
state.json's fields against their ranges (``step >= 0``, ...), config.json's sections against their
types and the registries' accepted values, and the weights' safetensors header (names, shapes,
dtypes, read without loading a tensor) against the network the config describes, built on the
``meta`` device (shapes only, no memory). A config whose network does not match the weights file
(e.g. a forged ``hidden=200000``), a weight of an integer dtype where the net has a float one, or an
optimizer state that does not fit the parameters is refused, naming the file and the entry; only
then is the network built for real and the weights loaded (in the dtype they were stored in).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._utils import atomic_write_bytes
from .model import ScoreModel
from .registry import Int, Real
from .sde import LinearSDE, sde_from_config

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "save_checkpoint",
    "save_run_checkpoint",
    "load_checkpoint",
    "load_model",
    "resolve_checkpoint",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "scoresde-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE, OPTIM_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "config.json", "state.json"
LATEST = "latest"
RUN_MANIFEST, RUN_FORMAT, OWNER_FILE = ".scoresde-run.json", "scoresde-run", ".scoresde-owner"
_STEP_DIR = re.compile(r"^step-\d+$")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, foreign, or cannot be rebuilt."""


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns."""

    model: ScoreModel  # eval mode, frozen weights; EMA weights unless ema=False
    sde: LinearSDE
    scaler: Any  # the data scaler (model space <-> data space), None if the run had none
    config: dict  # config.json
    state: dict  # state.json
    path: Path  # the checkpoint folder that was read (after following ``latest``)
    tensors: dict[str, Tensor] = field(default_factory=dict, repr=False)  # model.safetensors

    @property
    def step(self) -> int:
        return int(self.state.get("step", 0))

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.config.get("data_shape") or ())

    def optimizer_state(self, optimizer: torch.optim.Optimizer | None = None) -> dict:
        """The optimizer's ``state_dict()`` (tensors from optimizer.safetensors, the rest from state.json).

        With ``optimizer`` (the one it will be loaded into), the state is checked against it first
        (:func:`check_optimizer_state`): a state that would fail or misbehave in ``step()`` is refused."""
        sd = _optimizer_state(self.path, self.state)
        if optimizer is not None:
            check_optimizer_state(sd, optimizer, self.path / STATE_FILE)
        return sd


# ----------------------------------------------------------------------------------------------- save
def save_checkpoint(
    path: str | os.PathLike,
    model: ScoreModel,
    *,
    net_name: str | None = None,
    ema: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    config: dict | None = None,
    state: dict | None = None,
    owner: str | None = None,
) -> Path:
    """Write a complete checkpoint folder at ``path`` atomically.

    An existing folder at ``path`` is replaced only if it is provably a scoresde checkpoint (its
    ``state.json`` has the format tag) or, with ``owner``, carries that owner token (a run's);
    anything else there raises :class:`CheckpointError` and is left untouched.

    Args:
        path: the checkpoint folder to write.
        model: the trained :class:`ScoreModel` (its net may be wrapped in DistributedDataParallel).
        net_name: the net's registry name in :data:`scoresde.nets.NETS` (found from its class
            when omitted).
        ema: a module with the net's structure holding the EMA weights (optional).
        optimizer: the optimizer whose state to keep (optional).
        config: more plain-data config (loss, data, scaler, trainer settings, data_shape, ...).
        state: plain-data training state (step, RNG states, schedule, loss history, ...).
        owner: a token written into the folder (``.scoresde-owner``): a run folder's, so that only
            folders this run wrote are ever pruned or replaced.
    """
    path = Path(path)
    net = _unwrap(model.net)
    if not isinstance(net, nn.Module):
        raise TypeError(f"model.net must be an nn.Module to be saved; got {type(net).__name__}")
    name = net_name or _net_name(net)
    net_kwargs = net.config() if callable(getattr(net, "config", None)) else None
    if net_kwargs is None:
        raise TypeError(f"{type(net).__name__} has no .config() (its constructor kwargs as plain data)")
    from . import __version__

    full_config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "scoresde_version": __version__,
        "net": {"name": name, "kwargs": net_kwargs},
        "sde": model.sde.config(),
        "model": model.config(),
        **(config or {}),
    }
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in _unwrap(ema).state_dict().items()})
    full_state = {"format": FORMAT, "format_version": FORMAT_VERSION, **(state or {})}
    optim_tensors: dict[str, Tensor] = {}
    if optimizer is not None:
        optim_tensors, full_state["optimizer"] = _flatten_optimizer(optimizer.state_dict())

    blobs = {
        MODEL_FILE: _safetensors_bytes(tensors),
        OPTIM_FILE: _safetensors_bytes(optim_tensors),
        CONFIG_FILE: _json_bytes(full_config, indent=1),
    }
    full_state["files"] = {k: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for k, b in blobs.items()}
    blobs[STATE_FILE] = _json_bytes(full_state)  # written last: its presence marks a complete folder
    _write_folder_atomically(path, blobs, owner)
    return path


def _owned(path: Path, token: str | None) -> bool:
    """Whether ``path`` is a folder that scoresde provably wrote: it carries the owner token, or (no
    token given) its state.json has the checkpoint format tag."""
    if not path.is_dir() or path.is_symlink():
        return False
    if token is not None:
        try:
            return (path / OWNER_FILE).read_text(encoding="utf-8").strip() == token
        except (OSError, UnicodeDecodeError):
            return False
    try:
        return json.loads((path / STATE_FILE).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def _run_manifest(run_dir: Path) -> dict:
    """The run folder's manifest (created on the first checkpoint): a random owner token and the names
    of the checkpoints this run wrote. Nothing else in the folder is ever deleted."""
    file = run_dir / RUN_MANIFEST
    if file.exists():
        try:
            m = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise CheckpointError(f"{file}: unreadable run manifest ({err})") from None
        if not (isinstance(m, dict) and m.get("format") == RUN_FORMAT and isinstance(m.get("token"), str)
                and isinstance(m.get("checkpoints"), list)):
            raise CheckpointError(f"{file}: not a scoresde run manifest")
        return m
    return {"format": RUN_FORMAT, "version": 1, "token": uuid.uuid4().hex, "checkpoints": []}


def save_run_checkpoint(run_dir: str | os.PathLike, step: int, *, keep: int = 2, **kwargs: Any) -> Path:
    """Save ``run_dir/step-<step>`` with :func:`save_checkpoint`, then point ``run_dir/latest`` at it
    and delete all but the ``keep`` newest of this run's step folders (``keep <= 0`` keeps all).

    The run folder may hold other files: only what this run provably wrote (the folders carrying the
    run manifest's owner token, ``.scoresde-run.json``) is ever deleted or replaced, so a foreign
    ``step-12``, ``.tmp-x`` or ``.old-step-y`` is left byte-identical.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = _run_manifest(run_dir)
    token = manifest["token"]
    name = f"step-{int(step):07d}"
    # Leftovers of a writer of this run killed mid-write (only one process writes a run folder).
    for junk in run_dir.iterdir():
        if junk.name.startswith((".tmp-", ".old-")) and _owned(junk, token):
            shutil.rmtree(junk, ignore_errors=True)
    out = save_checkpoint(run_dir / name, owner=token, **kwargs)
    manifest["checkpoints"] = sorted(set(manifest["checkpoints"]) | {name})
    atomic_write_bytes(run_dir / RUN_MANIFEST, _json_bytes(manifest, indent=1))
    atomic_write_bytes(run_dir / LATEST, (name + "\n").encode())
    if keep > 0:
        ours = [n for n in manifest["checkpoints"] if _STEP_DIR.match(n) and _owned(run_dir / n, token)]
        for old in ours[:-keep]:
            if old != name:
                shutil.rmtree(run_dir / old, ignore_errors=True)
        manifest["checkpoints"] = [n for n in manifest["checkpoints"] if (run_dir / n).is_dir()]
        atomic_write_bytes(run_dir / RUN_MANIFEST, _json_bytes(manifest, indent=1))
    return out


def _write_folder_atomically(path: Path, blobs: dict[str, bytes], owner: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not _owned(path, owner) and not _owned(path, None):
        raise CheckpointError(f"{path} exists and is not a checkpoint scoresde wrote: refusing to replace it "
                              "(choose another path, or move it away)")
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if owner is not None:
            atomic_write_bytes(tmp / OWNER_FILE, (owner + "\n").encode())  # first: marks the folder as ours
        for fname, data in blobs.items():
            atomic_write_bytes(tmp / fname, data)  # fsynced, mode 0o666 & ~umask
        _fsync_dir(tmp)
        old = None
        if path.exists():  # a directory cannot be renamed onto a non-empty one: move the old aside
            old = path.parent / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _safetensors_bytes(tensors: dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    # safetensors refuses shared or non-contiguous storage: store independent CPU copies.
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def _json_bytes(obj: Any, indent: int | None = None) -> bytes:
    # state.json is compact (RNG states are long lists of bytes); config.json is meant to be read
    return (json.dumps(obj, indent=indent, separators=None if indent else (",", ":")) + "\n").encode("utf-8")


def _unwrap(net: Any) -> Any:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            net = net.module
        elif hasattr(net, "_orig_mod"):
            net = net._orig_mod
        else:
            return net


def _net_name(net: nn.Module) -> str:
    from .nets import NETS

    name = getattr(net, "name", None)
    if isinstance(name, str) and name in NETS and NETS[name] is type(net):
        return name
    for name, factory in NETS.items():
        if factory is type(net):
            return name
    raise TypeError(
        f"cannot find {type(net).__name__} in scoresde.nets.NETS ({', '.join(NETS)}); pass net_name= "
        "or register the net"
    )


def _flatten_optimizer(sd: dict) -> tuple[dict[str, Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and plain JSON data."""
    tensors: dict[str, Tensor] = {}
    plain_state: dict[str, dict] = {}
    for pid, entry in sd["state"].items():
        plain_state[str(pid)] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tname = f"state.{pid}.{key}"
                tensors[tname] = value
                plain_state[str(pid)][key] = {"tensor": tname}
            else:
                plain_state[str(pid)][key] = {"value": value}
    return tensors, {"state": plain_state, "param_groups": sd["param_groups"]}


def _optimizer_state(path: Path, state: dict) -> dict:
    plain = state.get("optimizer")
    if not isinstance(plain, dict):
        raise CheckpointError(f"{path / STATE_FILE}: holds no optimizer state (saved without an optimizer)")
    tensors = _read_safetensors(path / OPTIM_FILE)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path / OPTIM_FILE}: {bad[:5]} hold NaN or Inf (a corrupt or diverged checkpoint)")
    out_state = {}
    try:
        for pid, entry in plain["state"].items():
            out_state[int(pid)] = {
                key: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for key, v in entry.items()
            }
        groups = []
        for g in plain["param_groups"]:
            g = dict(g)
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
            groups.append(g)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: the optimizer state in {STATE_FILE} / {OPTIM_FILE} is malformed ({err!r})") from None
    return {"state": out_state, "param_groups": groups}


def check_optimizer_state(sd: dict, optimizer: torch.optim.Optimizer, where: Any) -> None:
    """Refuse an optimizer state (``state_dict()`` form) that ``optimizer`` cannot use.

    The hyper-parameters of each group must have the keys and types of ``optimizer``'s own (numbers
    finite, ``lr`` / ``eps`` / ``weight_decay`` >= 0, ``betas`` in [0, 1)) and name the same parameters;
    then the state is loaded into a copy of the optimizer over meta-device parameters (no memory) and one
    ``step()`` is taken there, which catches every missing, mistyped or misshapen entry.
    """
    import copy

    live = optimizer.state_dict()["param_groups"]
    groups = sd.get("param_groups") if isinstance(sd, dict) else None
    if not isinstance(groups, list) or len(groups) != len(live):
        raise CheckpointError(f"{where}: the optimizer state has {len(groups) if isinstance(groups, list) else 'no'} "
                              f"parameter groups; {type(optimizer).__name__} has {len(live)}")
    for i, (g, ref) in enumerate(zip(groups, live, strict=True)):
        if not isinstance(g, dict) or set(g) != set(ref):
            raise CheckpointError(f"{where}: optimizer parameter group {i} has keys {sorted(g) if isinstance(g, dict) else g!r}; "
                                  f"{type(optimizer).__name__} has {sorted(ref)}")
        for k, rv in ref.items():
            v, bad = g[k], False
            if k == "params":
                bad = v != rv
            elif isinstance(rv, bool):
                bad = not isinstance(v, bool)
            elif isinstance(rv, (int, float)):
                bad = not Real(ge=0 if k in ("lr", "eps", "weight_decay") else None).accepts(v)
            elif isinstance(rv, (tuple, list)):
                bad = not (isinstance(v, (tuple, list)) and len(v) == len(rv)
                           and all(Real(ge=0, lt=1).accepts(u) if k == "betas" else Real().accepts(u) for u in v))
            elif rv is None:
                bad = v is not None and not isinstance(v, bool)
            elif isinstance(rv, str):
                bad = not isinstance(v, str)
            if bad:
                raise CheckpointError(f"{where}: optimizer parameter group {i}: {k}={v!r} is not accepted (the optimizer "
                                      f"has {rv!r})"[:300])
    params = [p for g in optimizer.param_groups for p in g["params"]]
    meta = {id(p): nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta")) for p in params}
    try:
        probe = type(optimizer)([{"params": [meta[id(p)] for p in g["params"]]} for g in optimizer.param_groups])
    except (TypeError, ValueError):  # an optimizer that cannot be built from its parameters alone: no dry run
        return
    try:
        probe.load_state_dict(copy.deepcopy(sd))
        for p in meta.values():
            p.grad = torch.empty_like(p)
        probe.step()
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{where}: the optimizer state does not fit {type(optimizer).__name__} on these parameters "
                              f"({type(err).__name__}: {err})"[:400]) from None


# ----------------------------------------------------------------------------------------------- load
def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder that ``path`` names: itself, or (for a run folder) the one ``latest`` names."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.is_file():
        raise CheckpointError(
            f"checkpoint {str(p)!r} is a file; a scoresde checkpoint is a folder holding {MODEL_FILE}, "
            f"{CONFIG_FILE} and {STATE_FILE} (or a run folder with a '{LATEST}' file). Pickled .pt/.pth files "
            "are never loaded"
        )
    if (p / STATE_FILE).exists() or (p / CONFIG_FILE).exists():
        return p
    if (p / LATEST).exists():
        try:
            name = (p / LATEST).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{p / LATEST}: unreadable ({err})") from None
        if not _STEP_DIR.match(name):
            raise CheckpointError(f"{p / LATEST}: expected a checkpoint name like 'step-0001000'; got {name[:80]!r}")
        if not (p / name).is_dir():
            raise CheckpointError(f"{p / LATEST} names {name!r}, but {p / name} does not exist")
        return p / name
    raise CheckpointError(
        f"{str(p)!r} is not a scoresde checkpoint: it has neither {STATE_FILE}/{CONFIG_FILE} nor a '{LATEST}' file"
    )


def _read_json(file: Path) -> dict:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (incomplete or foreign checkpoint folder)")
    try:
        obj = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err}); the file is corrupt or not a scoresde file") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file}: expected a JSON object; got {type(obj).__name__}")
    if obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{file}: no '{FORMAT}' format tag (found format={obj.get('format')!r}); not a scoresde checkpoint"
        )
    version = obj.get("format_version")
    if not Int(ge=1).accepts(version) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: format_version {version!r} is not supported by this scoresde (reads up to {FORMAT_VERSION})"
        )
    return obj


def _verify_files(path: Path, state: dict) -> None:
    files = state.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{path / STATE_FILE}: no 'files' manifest; not a complete scoresde checkpoint")
    for fname, meta in files.items():
        if fname not in (MODEL_FILE, OPTIM_FILE, CONFIG_FILE):
            raise CheckpointError(f"{path / STATE_FILE}: unexpected file {fname!r} in the manifest")
        if not (isinstance(meta, dict) and Int(ge=0).accepts(meta.get("bytes")) and isinstance(meta.get("sha256"), str)):
            raise CheckpointError(f"{path / STATE_FILE}: the manifest entry of {fname} must be "
                                  f"{{'bytes': int, 'sha256': hex}}; got {meta!r}"[:300])
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (the checkpoint folder is incomplete)")
        size = f.stat().st_size
        if size != meta.get("bytes"):
            raise CheckpointError(
                f"{f}: {size} bytes, but the checkpoint recorded {meta.get('bytes')} (truncated or replaced)"
            )
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        if digest != meta.get("sha256"):
            raise CheckpointError(f"{f}: sha256 does not match the one recorded in {STATE_FILE} (corrupt or replaced)")


def _read_safetensors(file: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        return load(file.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None


_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def _read_header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (safetensors dtype, shape)}`` of a safetensors file, from its header alone (no tensor is
    read; the library checks that the offsets fit the file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None


def _kind(dtype: str | torch.dtype) -> str:
    """'float', 'int', 'bool' or 'complex': a stored weight must be of the kind of the net's tensor."""
    if isinstance(dtype, torch.dtype):
        return "float" if dtype.is_floating_point else "complex" if dtype.is_complex else (
            "bool" if dtype == torch.bool else "int")
    return "float" if dtype in _FLOAT_DTYPES or dtype.startswith("F8") else "bool" if dtype == "BOOL" else (
        "complex" if dtype.startswith("C") else "int")


def _compare(expected: dict[str, tuple[Any, tuple[int, ...]]], stored: dict[str, tuple[Any, tuple[int, ...]]],
             where: Any, what: str = "the net rebuilt from config.json") -> None:
    """Names, shapes and dtype kinds of stored tensors against those a module expects; raise naming them."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    common = [k for k in expected if k in stored]
    bad_shape = [f"{k} {tuple(stored[k][1])} != {tuple(expected[k][1])}" for k in common
                 if tuple(stored[k][1]) != tuple(expected[k][1])]
    bad_dtype = [f"{k} is {stored[k][0]}, not {_kind(expected[k][0])}" for k in common
                 if _kind(stored[k][0]) != _kind(expected[k][0])]
    if missing or unexpected or bad_shape or bad_dtype:
        parts = [f"{label} {items[:5]}" for label, items in (("missing", missing), ("unexpected", unexpected),
                 ("wrong shape", bad_shape), ("wrong dtype", bad_dtype)) if items]
        raise CheckpointError(f"{where}: weights do not fit {what} ({', '.join(parts)})")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _meta_net(net_cfg: Any, where: str) -> nn.Module | None:
    """The net that ``net_cfg`` describes, built on the meta device (shapes and dtypes, no memory); None
    when its constructor cannot run there (a user's net): then only the real build is checked."""
    try:
        with torch.device("meta"):
            return build_net_from_config(net_cfg, where)
    except CheckpointError:
        raise
    except Exception as err:  # a user-registered net that cannot be built on the meta device
        import warnings

        warnings.warn(f"{where}: net {net_cfg.get('name')!r} cannot be built on the meta device ({err!r}); its size "
                      "is checked only after it is built", stacklevel=3)
        return None


def _check_weights_header(ckpt: Path, config: dict, state: dict, ema: bool) -> None:
    """Refuse, before building anything, a config whose net does not fit the stored weights."""
    where = str(ckpt / CONFIG_FILE)
    header = _read_header(ckpt / MODEL_FILE)
    stray = sorted(k for k in header if not k.startswith(("net.", "ema.")))
    if stray:
        raise CheckpointError(f"{ckpt / MODEL_FILE}: unexpected tensors {stray[:5]} (only 'net.*' and 'ema.*')")
    meta = _meta_net(config.get("net"), where)
    if meta is None:
        return
    expected = {k: (v.dtype, tuple(v.shape)) for k, v in meta.state_dict().items()}
    for prefix in ("net.", "ema."):
        stored = {k[len(prefix):]: v for k, v in header.items() if k.startswith(prefix)}
        if not stored and prefix == "ema.":
            continue  # saved without EMA weights (load_checkpoint says so when they are asked for)
        want = sum(_numel(s) for _, s in expected.values())
        have = sum(_numel(s) for _, s in stored.values())
        if want > have:
            name, kw = config["net"]["name"], config["net"].get("kwargs")
            raise CheckpointError(
                f"{where}: net {name!r} with kwargs {kw} has {want:,} weights ({want * 4 / 2**30:.3g} GiB as float32), but "
                f"{ckpt / MODEL_FILE} holds {have:,} under '{prefix}*': the config does not describe these weights; "
                "refusing to build it")
        _compare(expected, stored, ckpt / MODEL_FILE, f"the net rebuilt from {CONFIG_FILE} ('{prefix}*')")
        floats = {stored[k][0] for k in stored if _kind(stored[k][0]) == "float"}
        if len(floats) > 1:
            raise CheckpointError(f"{ckpt / MODEL_FILE}: the '{prefix}*' weights mix float dtypes {sorted(floats)}")
        bad = sorted(d for d in floats if d not in _FLOAT_DTYPES)
        if bad:
            raise CheckpointError(f"{ckpt / MODEL_FILE}: float dtype {bad[0]} is not supported (F16, BF16, F32, F64)")
    if isinstance(state.get("optimizer"), dict):
        _check_optimizer_header(ckpt, state, [tuple(p.shape) for p in meta.parameters()])
    shape = config.get("data_shape")
    if shape:  # the samples the commands will draw must fit the net: one forward pass on the meta device
        x = torch.empty((1, *shape), device="meta")
        try:
            with torch.no_grad():
                out = meta(x, torch.empty(1, device="meta"))
        except (ValueError, RuntimeError) as err:
            raise CheckpointError(f"{where}: data_shape={shape} does not fit the net ({err})") from None
        except Exception:  # a user's net that cannot run on the meta device: checked when it is called
            return
        if getattr(out, "shape", None) != x.shape:
            raise CheckpointError(f"{where}: data_shape={shape} does not fit the net (its output has shape "
                                  f"{tuple(getattr(out, 'shape', ()))[1:]})")


def _check_optimizer_header(ckpt: Path, state: dict, param_shapes: list[tuple[int, ...]]) -> None:
    """Every optimizer state tensor names a parameter of the net, is a float, and is a scalar or the
    parameter's shape (AdamW's exp_avg, exp_avg_sq)."""
    header = _read_header(ckpt / OPTIM_FILE)
    for name, (dtype, shape) in header.items():
        parts = name.split(".")
        ok = len(parts) == 3 and parts[0] == "state" and parts[1].isdigit() and int(parts[1]) < len(param_shapes)
        if not ok:
            raise CheckpointError(f"{ckpt / OPTIM_FILE}: tensor {name!r} names no parameter of the net "
                                  f"(expected 'state.<0..{len(param_shapes) - 1}>.<key>')")
        if _kind(dtype) != "float":
            raise CheckpointError(f"{ckpt / OPTIM_FILE}: {name} is {dtype}, not a float")
        if shape not in ((), param_shapes[int(parts[1])]):
            raise CheckpointError(f"{ckpt / OPTIM_FILE}: {name} has shape {shape}, but parameter {parts[1]} has "
                                  f"{param_shapes[int(parts[1])]}")


#: accepted values of state.json's plain fields (checked on load, before anything is built).
_STATE_FIELDS = {"step": Int(ge=0), "world_size": Int(ge=1), "train_seconds": Real(ge=0)}


def _check_state(state: dict, file: Path) -> None:
    """state.json's fields have the types and ranges the trainer wrote (an untrusted file)."""
    for name, param in _STATE_FIELDS.items():
        if name in state and not param.accepts(state[name]):
            _bad(file, name, state[name], param.describe())
    step = state.get("step", 0)
    hist = state.get("loss_history", [])
    if not (isinstance(hist, list) and all(
            isinstance(h, list) and len(h) == 2 and Int(ge=0, le=step).accepts(h[0]) and Real(allow_inf=True).accepts(h[1])
            for h in hist)):
        _bad(file, "loss_history", hist, f"a list of [step <= {step}, loss] pairs")
    win = state.get("loss_window", [0.0, 0])
    if not (isinstance(win, list) and len(win) == 2 and Real(allow_inf=True).accepts(win[0]) and Int(ge=0).accepts(win[1])):
        _bad(file, "loss_window", win, "[sum of losses, count >= 0]")
    rng = state.get("rng", {})
    if not isinstance(rng, dict) or any(not isinstance(v, list) or not all(
            u is None or (isinstance(u, list) and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255
                                                     for b in u)) for u in v) for v in rng.values()):
        _bad(file, "rng", "...", "{name: [one state per process: a list of bytes 0..255, or null]}")
    sizes = {len(v) for v in rng.values()}
    if len(sizes) > 1:
        _bad(file, "rng", {k: len(v) for k, v in rng.items()}, "the same number of processes for every stream")
    cpu = len(torch.get_rng_state())
    if any(u is not None and len(u) != cpu for u in rng.get("torch", [])):
        _bad(file, "rng.torch", "...", f"CPU generator states of {cpu} bytes")
    for name in ("scheduler", "grad_scaler", "optimizer"):
        if state.get(name) is not None and not isinstance(state[name], dict):
            _bad(file, name, state[name], "a JSON object or null")


def _bad(file: Path, name: str, value: Any, accepted: str) -> None:
    text = repr(value)
    raise CheckpointError(f"{file}: {name}={text[:80]}{'...' if len(text) > 80 else ''} is not accepted; "
                          f"accepted: {accepted}")


def _check_config(config: dict, file: Path) -> None:
    """config.json's sections have the types load_checkpoint and the commands rely on."""
    net = config.get("net")
    if not (isinstance(net, dict) and isinstance(net.get("name"), str) and isinstance(net.get("kwargs") or {}, dict)):
        _bad(file, "net", net, "{'name': a registered net, 'kwargs': {...}}")
    for name in ("sde", "model", "train", "loss", "scaler"):
        if config.get(name) is not None and not isinstance(config[name], dict):
            _bad(file, name, config[name], "a JSON object")
    if "world_size" in config and not Int(ge=1).accepts(config["world_size"]):
        _bad(file, "world_size", config["world_size"], "an integer >= 1")
    shape = config.get("data_shape")
    if shape is not None and not (isinstance(shape, list) and 1 <= len(shape) <= 4
                                  and all(Int(ge=1).accepts(d) for d in shape)):
        _bad(file, "data_shape", shape, "a list of 1 to 4 positive integers")
    if "conditional" in config and not isinstance(config["conditional"], bool):
        _bad(file, "conditional", config["conditional"], "true or false")
    data = config.get("data")
    if data is not None:
        if not (isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"]
                and (data.get("n") is None or Int(ge=1).accepts(data["n"])) and Int(ge=0).accepts(data.get("seed", 0))
                and isinstance(data.get("kwargs", {}), dict)):
            _bad(file, "data", data, "{'name': a data set or path, 'n': null or >= 1, 'seed': >= 0, 'kwargs': {...}}")


def build_net_from_config(net_cfg: Any, where: str = CONFIG_FILE) -> nn.Module:
    """Rebuild a network from ``{"name": NETS key, "kwargs": {...}}`` (whitelisted names only)."""
    from .nets import NETS, build_net

    if not isinstance(net_cfg, dict) or not isinstance(net_cfg.get("name"), str):
        raise CheckpointError(f"{where}: 'net' must be {{'name': ..., 'kwargs': {{...}}}}; got {net_cfg!r}")
    name, kwargs = net_cfg["name"], net_cfg.get("kwargs") or {}
    if name not in NETS:
        raise CheckpointError(f"{where}: unknown net {name!r}; accepted: {', '.join(NETS)}")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: net kwargs must be a JSON object; got {kwargs!r}")
    try:
        return build_net(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: cannot build net {name!r} from kwargs {kwargs}: {err}") from None


def scaler_from_config(cfg: Any, where: str = CONFIG_FILE) -> Any:
    """Rebuild the data scaler from its plain-data config (None -> None)."""
    if cfg is None:
        return None
    from . import data

    try:
        return data.Scaler.from_config(cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{where}: cannot rebuild the data scaler from {cfg!r}: {err}") from None


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device | None = None, ema: bool = True) -> LoadedCheckpoint:
    """Load a checkpoint folder (or a run folder's latest) without executing any stored code.

    Returns a :class:`LoadedCheckpoint` whose ``model`` is a :class:`ScoreModel` in eval mode with
    frozen weights (``requires_grad=False``) on ``device`` (default CPU), holding the EMA weights
    (``ema=False``: the raw trained weights).
    """
    ckpt = resolve_checkpoint(path)
    state = _read_json(ckpt / STATE_FILE)
    _verify_files(ckpt, state)
    config = _read_json(ckpt / CONFIG_FILE)
    where = str(ckpt / CONFIG_FILE)
    # Everything below is checked before any tensor is allocated (the trust model: module docstring).
    _check_state(state, ckpt / STATE_FILE)
    _check_config(config, ckpt / CONFIG_FILE)
    try:
        sde = sde_from_config(config.get("sde"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: cannot rebuild the SDE: {err}") from None
    mcfg = config.get("model") or {}
    unknown = sorted(set(mcfg) - {"parameterization", "noise_input", "sigma_data"})
    if unknown:
        raise CheckpointError(f"{where}: unknown ScoreModel option(s) {unknown} in 'model'")
    _check_weights_header(ckpt, config, state, ema)
    prefix = "ema." if ema else "net."
    if ema and not any(k.startswith(prefix) for k in _read_header(ckpt / MODEL_FILE)):
        raise CheckpointError(f"{ckpt / MODEL_FILE}: holds no EMA weights ('ema.*'); load with ema=False")
    net = build_net_from_config(config.get("net"), where)
    tensors = _read_safetensors(ckpt / MODEL_FILE)
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    load_weights(net, weights, ckpt / MODEL_FILE)
    try:
        sigma_data = mcfg.get("sigma_data", 0.5)
        if not Real(gt=0).accepts(sigma_data):
            raise ValueError(f"sigma_data={sigma_data!r} is not accepted; accepted: {Real(gt=0).describe()}")
        model = ScoreModel(net, sde, mcfg.get("parameterization", "score"),
                           noise_input=mcfg.get("noise_input", "t"), sigma_data=sigma_data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: bad ScoreModel config {mcfg!r}: {err}") from None
    # an inference model: eval mode, weights frozen (no autograd graph through them when sampling;
    # gradients with respect to x, as in the likelihood, still work). Trainer.resume unfreezes.
    model.to(torch.device(device) if device is not None else torch.device("cpu")).eval().requires_grad_(False)
    scaler = scaler_from_config(config.get("scaler"), where)
    return LoadedCheckpoint(model=model, sde=sde, scaler=scaler, config=config, state=state, path=ckpt, tensors=tensors)


def load_weights(net: nn.Module, weights: dict[str, Tensor], where: Any) -> None:
    """``net.load_state_dict(weights, strict=True)``, with mismatches (names, shapes, a non-float weight for
    a float parameter) reported as CheckpointError. Float weights keep the dtype they were stored in: the
    net is converted to it first (a float64 run loads as float64, never rounded to float32)."""
    _compare({k: (v.dtype, tuple(v.shape)) for k, v in net.state_dict().items()},
             {k: (v.dtype, tuple(v.shape)) for k, v in weights.items()}, where)
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{where}: weights {bad[:5]} hold NaN or Inf (a corrupt or diverged checkpoint)")
    floats = {v.dtype for v in weights.values() if v.is_floating_point()}
    if len(floats) > 1:
        raise CheckpointError(f"{where}: the weights mix float dtypes {sorted(map(str, floats))}")
    if floats and floats != {p.dtype for p in net.state_dict().values() if p.is_floating_point()}:
        net.to(floats.pop())
    net.load_state_dict(weights, strict=True)


def load_model(path: str | os.PathLike, *, device: str | torch.device | None = None, ema: bool = True):
    """Convenience: ``(ScoreModel, sde, scaler)`` from a checkpoint or run folder."""
    ck = load_checkpoint(path, device=device, ema=ema)
    return ck.model, ck.sde, ck.scaler
