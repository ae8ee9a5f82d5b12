"""Training by denoising score matching (Song et al. 2021, Eq. 7): the :class:`Trainer`.

One loop, the same on one CPU and on N GPUs: AdamW, linear LR warm-up, gradient clipping, an EMA
of the weights, optional autocast (bf16, or fp16 with a GradScaler; CUDA only), a tqdm bar with
loss and it/s, periodic atomic checkpoints (:mod:`scoresde.checkpoint`), PNG sample snapshots,
and EXACT resume: a run stopped after k steps and resumed to N gives bit-identical weights to an
uninterrupted run (same device, same seed).

Randomness. The data order is a pure function of ``(seed, step)``: epoch e is a permutation drawn
from a generator seeded by ``(seed, e)``, and step s takes the batch at position
``s mod batches_per_epoch`` of epoch ``s // batches_per_epoch`` (the last incomplete batch of an
epoch is dropped). The loss noise (t and eps) comes from a ``torch.Generator`` per process, seeded
by ``(seed, rank)``; its state, torch's global RNG state (dropout) and the step are checkpointed.

Label dropout (classifier-free guidance, Ho & Salimans 2022, Sec. 3.2 / Alg. 1): with
``label_dropout = p > 0``, a class-conditional run replaces each label of the batch by the null
label ``num_classes`` with probability p, so that the network learns the unconditional model on
the same weights. The draw comes from the loss generator (before the loss's t and eps), so it is
part of the checkpointed state and a resume stays exact; with p = 0 nothing is drawn (the noise
streams are those of a run without the option).

Data parallel (``torchrun``): the GLOBAL batch of ``batch_size`` is split into ``world_size``
equal contiguous slices, rank r takes slice r; DistributedDataParallel averages the gradients, so
the update is that of the global batch (the loss noise differs from a one-process run's, so loss
curves agree within noise, not bit for bit). Only rank 0 writes checkpoints and snapshots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint as ckpt_mod
from . import distributed
from ._utils import FolderLock
from .model import NonFiniteError, ScoreModel
from .plots import image_range, save_sample_figure  # noqa: F401  (public here since 0.1)
from .registry import Anything, Bool, Choice, Int, Maybe, Real
from .sde import LinearSDE

__all__ = ["TrainConfig", "Trainer", "train_points", "default_parameterization", "data_std", "save_sample_figure",
           "image_range", "global_batch"]

AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Trainer hyper-parameters (plain data; stored in every checkpoint's config.json)."""

    steps: int = 10_000  # total optimiser steps (a resumed run continues up to this)
    batch_size: int = 256  # GLOBAL batch, split across processes
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup: int = 200  # linear LR warm-up steps (0 = none)
    grad_clip: float = 1.0  # max global gradient norm (0 = no clipping)
    ema_decay: float = 0.999  # EMA decay; the effective decay is min(ema_decay, (1+s)/(10+s))
    ckpt_every: int = 1000  # checkpoint period in steps (0 = only at the end); a final one is always written
    keep: int = 2  # step-N checkpoints kept in the run folder (0 = all)
    snapshot_every: int = 0  # PNG sample snapshot period (0 = none)
    snapshot_sampler: str = "ancestral"  # a cheap sampler for snapshots
    snapshot_steps: int = 100
    snapshot_n: int = 0  # samples per snapshot (0 = 2000 for points, 64 for images)
    seed: int = 0
    device: str = "auto"  # "auto": cuda:LOCAL_RANK if available, else cpu
    amp: str = "none"  # "none", "bf16" or "fp16" (CUDA only)
    loss: str = "dsm"  # a name in scoresde.losses.LOSSES
    loss_kwargs: dict = field(default_factory=dict)  # e.g. {"weighting": "likelihood"}
    label_dropout: float = 0.0  # conditional runs: P(label -> the null label num_classes) per example (CFG)
    log_every: int = 50  # steps per loss-history entry (and per log line without a bar)
    progress: bool | None = None  # tqdm bar (None: only on a terminal)
    verbose: bool = True  # print log lines when there is no bar

    def __post_init__(self):
        for name, param in _TRAIN_PARAMS.items():
            setattr(self, name, param.check(name, getattr(self, name), "TrainConfig"))


_POS_INT, _NONNEG_INT = Int(ge=1), Int(ge=0)
#: accepted values of every TrainConfig field (checked when a config is made, e.g. from a checkpoint).
_TRAIN_PARAMS = {
    "steps": _POS_INT, "batch_size": _POS_INT, "log_every": _POS_INT, "snapshot_steps": _POS_INT,
    "warmup": _NONNEG_INT, "ckpt_every": _NONNEG_INT, "keep": _NONNEG_INT, "snapshot_every": _NONNEG_INT,
    "snapshot_n": _NONNEG_INT, "seed": _NONNEG_INT, "lr": Real(gt=0), "weight_decay": Real(ge=0),
    "grad_clip": Real(ge=0), "ema_decay": Real(ge=0, lt=1), "label_dropout": Real(ge=0, le=1), "amp": Choice(AMP_MODES),
    "loss_kwargs": Anything(types=(dict,)), "progress": Maybe(Bool()), "verbose": Bool(),
    "snapshot_sampler": Anything(types=(str,)), "device": Anything(types=(str,)), "loss": Anything(types=(str,)),
}


def default_parameterization(sde: LinearSDE) -> tuple[str, str]:
    """(parameterization, noise_input) that trains well for ``sde``: EDM preconditioning for
    sigma-valued SDEs (VE, EDM: sigma spans 4 decades), eps with c_noise = t for VP and sub-VP."""
    if type(sde).__name__ in ("VESDE", "EDMSDE"):
        return "edm", "edm"
    return "eps", "t"


def data_std(x: Tensor) -> float:
    """EDM's sigma_data for a data set: the standard deviation of all its values, to 3 significant digits."""
    s = float(x.double().std())
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"cannot take sigma_data from data with standard deviation {s}")
    return float(f"{s:.3g}")


def _mix(*parts: Any) -> int:
    """A 56-bit seed from any tuple of ints/strings (stable across runs and platforms)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=7).digest()
    return int.from_bytes(digest, "little")


def global_batch(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    """Indices (batch_size,) of the global batch at ``step``: epoch-wise permutations seeded by (seed, epoch)."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size={batch_size} is larger than the data set ({n} examples)")
    epoch, pos = divmod(int(step), per_epoch)
    return _epoch_perm(n, seed, epoch)[pos * batch_size:(pos + 1) * batch_size]


@functools.lru_cache(maxsize=4)
def _epoch_perm(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, "data", epoch)))


class _TensorData:
    """A plain (N, *D) tensor (and optional labels) used as a data set: no scaler, no config."""

    def __init__(self, x: Tensor, y: Tensor | None = None):
        if not isinstance(x, Tensor) or x.ndim < 2:
            raise ValueError(f"data must be a tensor of shape (N, *D); got {getattr(x, 'shape', type(x).__name__)}")
        self.x, self.y, self.scaler, self.name = x.float(), y, None, "tensor"
        self.kind = "images" if x.ndim == 4 else "points"

    def config(self):
        return None


class Trainer:
    """Trains a :class:`ScoreModel` on a data set; see the module docstring for the semantics.

    Args:
        model: the ScoreModel to train (its net must be an ``nn.Module`` with ``.config()``).
        data: a :mod:`scoresde.data` Dataset (``.x``, ``.y``, ``.scaler``, ``.config()``) or a
            plain (N, *D) tensor.
        config: a :class:`TrainConfig`.
        out: the run folder (checkpoints ``step-N/``, ``latest``, ``snapshots/``); None: no files.
        net_name: the net's name in ``scoresde.nets.NETS`` (found from its class when omitted).
        cond: train class-conditionally on ``data.y`` (default: when the net has ``num_classes``).
    """

    def __init__(self, model: ScoreModel, data: Any, config: TrainConfig | None = None, *,
                 out: str | os.PathLike | None = None, net_name: str | None = None, cond: bool | None = None):
        from .losses import get_loss

        self.config = cfg = config or TrainConfig()
        self.data = data if hasattr(data, "x") else _TensorData(data)
        self.out = Path(out) if out is not None else None
        self.rank, self.world, local_rank = distributed.env()
        self.device = distributed.pick_device(cfg.device, local_rank)
        if cfg.amp != "none" and self.device.type != "cuda":
            raise ValueError(f"amp={cfg.amp!r} needs a CUDA device; training runs on {self.device} (use amp='none')")
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({self.world})")
        distributed.init(self.device)
        self.loss_fn = get_loss(cfg.loss, **cfg.loss_kwargs)
        self.model = model
        self.net: nn.Module = model.net
        self.net_name = net_name or ckpt_mod._net_name(self.net)
        self.net.to(self.device).train()
        self.x = self.data.x.to(self.device)
        if cfg.batch_size > self.x.shape[0]:  # found now, not at the first step
            raise ValueError(f"batch_size={cfg.batch_size} is larger than the data set ({self.x.shape[0]} examples)")
        self.y = getattr(self.data, "y", None)
        num_classes = (self.net.config() or {}).get("num_classes") if hasattr(self.net, "config") else None
        self.conditional = bool(num_classes) if cond is None else cond
        if self.conditional and self.y is None:
            raise ValueError("conditional training needs labels: the data set has no .y")
        self.y = self.y.to(self.device) if (self.conditional and self.y is not None) else None
        if cfg.label_dropout and not self.conditional:
            raise ValueError(f"label_dropout={cfg.label_dropout} needs class-conditional training (a net built with "
                             "num_classes and a data set with labels); use label_dropout=0 for an unconditional run")
        # the "no label" index (LabelEmbedding's convention: classes 0..C-1, C = null)
        self.null_label = int(num_classes) if (self.conditional and num_classes) else None
        if cfg.label_dropout and self.null_label is None:
            raise ValueError(f"label_dropout={cfg.label_dropout} needs a net with num_classes (its null label); "
                             f"{type(self.net).__name__}.config() has none")

        self.ema = _copy_module(self.net).eval().requires_grad_(False)
        ddp_net = self.net
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            ddp_net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
            self.ema.load_state_dict(self.net.state_dict())  # DDP broadcast rank 0's initial weights
        self.train_model = ScoreModel(ddp_net, model.sde, model.parameterization, noise_input=model.noise_input,
                                      sigma_data=model.sigma_data, check_finite=False)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        self.loss_gen = torch.Generator(self.device).manual_seed(_mix(cfg.seed, "loss", self.rank))
        torch.manual_seed(_mix(cfg.seed, "torch", self.rank))  # dropout and any other global-RNG use
        self.step = 0
        self.history: list[list[float]] = []  # [step, mean loss over the window ending there]
        self.train_seconds = 0.0
        self._win_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._win_n = 0
        self._saved_step = -1
        self.stop_reason: str | None = None  # set by request_stop(): fit() stops after the current step

    # ------------------------------------------------------------------------------------- setup
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Tear down the process group (when there is one)."""
        if self.world > 1:
            distributed.shutdown()

    # ------------------------------------------------------------------------------------- one step
    def _lr(self, step: int) -> float:
        warm = self.config.warmup
        return self.config.lr * min(1.0, (step + 1) / warm) if warm else self.config.lr

    def _batch(self, step: int) -> tuple[Tensor, dict]:
        cfg = self.config
        idx = global_batch(step, self.x.shape[0], cfg.batch_size, cfg.seed)
        local = cfg.batch_size // self.world
        idx = idx[self.rank * local:(self.rank + 1) * local].to(self.device)
        cond = {"y": self.y[idx]} if self.y is not None else None
        return self.x[idx], cond

    def _drop_labels(self, y: Tensor) -> Tensor:
        """Label dropout: each label becomes the null label with probability ``label_dropout``
        (drawn from the loss generator, on the device: no host sync)."""
        u = torch.rand(y.shape, generator=self.loss_gen, device=self.device)
        return torch.where(u < self.config.label_dropout, torch.full_like(y, self.null_label), y)

    def _autocast(self):
        if self.config.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def train_step(self) -> Tensor:
        """One optimiser step on the batch of the current step; returns the (local) loss, detached."""
        cfg = self.config
        x0, cond = self._batch(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        if cond is not None and cfg.label_dropout > 0:
            cond = {**cond, "y": self._drop_labels(cond["y"])}
        with self._autocast():
            loss = self.loss_fn(self.train_model, x0, generator=self.loss_gen, cond=cond)
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.grad_scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self._ema_update()
        self.step += 1
        return loss.detach()

    @torch.no_grad()
    def _ema_update(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        ema_p = [p for p in self.ema.parameters()]
        net_p = [p.detach() for p in self.net.parameters()]
        torch._foreach_lerp_(ema_p, net_p, 1.0 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            b_ema.copy_(b)

    # ------------------------------------------------------------------------------------- the loop
    def fit(self) -> list[list[float]]:
        """Train up to ``config.steps``; returns the loss history [[step, mean loss], ...]."""
        cfg = self.config
        bar = None
        if self.is_main and cfg.progress is not False:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True,
                       disable=None if cfg.progress is None else False)
            if bar.disable:
                bar = None
        t_last = time.perf_counter()
        # One training process per run folder (rank 0 writes it): a second one stops here, naming the first.
        lock = FolderLock(self.out, what="run folder") if (self.out is not None and self.is_main) else None
        if lock is not None:
            lock.__enter__()
        try:
            while self.step < cfg.steps:
                if self._should_stop():
                    break
                loss = self.train_step()
                self._win_sum += loss.to(torch.float64)
                self._win_n += 1
                ckpt_now = bool(cfg.ckpt_every) and self.step % cfg.ckpt_every == 0
                if self.step % cfg.log_every == 0 or ckpt_now or self.step == cfg.steps:
                    now = time.perf_counter()
                    self.train_seconds += now - t_last
                    t_last = now
                    self._log(bar)
                if bar is not None:
                    bar.update(1)
                if ckpt_now:
                    self.save()
                if cfg.snapshot_every and self.step % cfg.snapshot_every == 0:
                    self.snapshot()
            if self._saved_step != self.step:
                self.save()
        finally:
            if bar is not None:
                bar.close()
            if lock is not None:
                lock.__exit__(None, None, None)
        return self.history

    def request_stop(self, reason: str) -> None:
        """Ask :meth:`fit` to stop after the step in progress and save a resumable checkpoint (the CLI
        calls this from its SIGINT/SIGTERM handler; a step is never interrupted half-way)."""
        self.stop_reason = reason

    def _should_stop(self) -> bool:
        stop = self.stop_reason is not None
        if self.world > 1:  # every rank stops at the same step, or DDP's collectives would hang
            import torch.distributed as dist

            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
            if stop and self.stop_reason is None:
                self.stop_reason = "another process was stopped"
        return stop

    def _log(self, bar) -> None:
        mean = self._win_sum / self._win_n
        if self.world > 1:
            import torch.distributed as dist

            mean = mean.clone()
            dist.all_reduce(mean)
            mean /= self.world
        value = float(mean)  # one host sync per log window
        self.history.append([self.step, value])
        self._win_sum.zero_()
        self._win_n = 0
        if not math.isfinite(value):
            raise NonFiniteError(f"the training loss became {value} by step {self.step} (lr={self._lr(self.step)})")
        if bar is not None:
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{self._lr(self.step - 1):.2e}", refresh=False)
        elif self.is_main and self.config.verbose:
            rate = self.step / self.train_seconds if self.train_seconds else float("nan")
            print(f"step {self.step}/{self.config.steps}  loss {value:.5f}  {rate:.1f} it/s", flush=True)

    # ------------------------------------------------------------------------------------- files
    def checkpoint_config(self) -> dict:
        data = self.data
        scaler = getattr(data, "scaler", None)
        return {
            "loss": {"name": self.config.loss, "kwargs": self.config.loss_kwargs},
            "data": data.config() if callable(getattr(data, "config", None)) else None,
            "scaler": scaler.config() if scaler is not None else None,
            "data_shape": list(self.x.shape[1:]),
            "data_kind": getattr(data, "kind", "points"),
            "conditional": self.conditional,
            "null_label": self.null_label,
            "train": dataclasses.asdict(self.config),
            "world_size": self.world,
        }

    def _rng_states(self) -> dict:
        mine = {"loss": self.loss_gen.get_state().tolist(), "torch": torch.get_rng_state().tolist(),
                "cuda": torch.cuda.get_rng_state(self.device).tolist() if self.device.type == "cuda" else None}
        if self.world == 1:
            return {k: [v] for k, v in mine.items()}
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return {k: [g[k] for g in gathered] for k in mine}

    def state(self) -> dict:
        """Plain-data training state (all ranks must call it: it gathers the RNG states)."""
        return {
            "step": self.step,
            "rng": self._rng_states(),
            "scheduler": {"kind": "linear_warmup", "base_lr": self.config.lr, "warmup": self.config.warmup,
                          "lr": self._lr(max(self.step - 1, 0))},
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler.is_enabled() else None,
            "loss_history": self.history,
            # the open loss-averaging window (a stop between log points resumes it exactly; with several
            # processes, rank 0's part of it)
            "loss_window": [float(self._win_sum), self._win_n],
            "train_seconds": self.train_seconds,
            "world_size": self.world,
        }

    def save(self) -> Path | None:
        """Write ``out/step-<N>`` and point ``out/latest`` at it (rank 0 writes; all ranks must call)."""
        state = self.state()
        self._saved_step = self.step
        if self.out is None or not self.is_main:
            return None
        return ckpt_mod.save_run_checkpoint(
            self.out, self.step, keep=self.config.keep, model=self.model, net_name=self.net_name,
            ema=self.ema, optimizer=self.optimizer, config=self.checkpoint_config(), state=state,
        )

    def ema_model(self) -> ScoreModel:
        """The EMA weights as a ScoreModel (eval mode)."""
        m = self.model
        return ScoreModel(self.ema, m.sde, m.parameterization, noise_input=m.noise_input, sigma_data=m.sigma_data)

    @torch.no_grad()
    def snapshot(self) -> Path | None:
        """Sample the EMA model with a cheap sampler and write ``out/snapshots/step-<N>.png`` (rank 0)."""
        if self.out is None or not self.is_main:
            return None
        from .samplers import sample

        cfg = self.config
        n = cfg.snapshot_n or (64 if self.x.ndim == 4 else 2000)
        kw = {}
        if self.conditional:
            k = int(self.net.config()["num_classes"])
            kw["cond"] = {"y": torch.arange(n, device=self.device) % k}
        res = sample(self.ema_model(), self.model.sde, (n, *self.x.shape[1:]), cfg.snapshot_sampler,
                     cfg.snapshot_steps, seeds=torch.arange(n), device=self.device, **kw)
        x = res.x.float().cpu()
        scaler = getattr(self.data, "scaler", None)
        if scaler is not None:
            x = scaler.from_model(x)
        path = self.out / "snapshots" / f"step-{self.step:07d}.png"
        vr = image_range(scaler, tuple(x.shape[1:])) if x.ndim == 4 else None
        save_sample_figure(x, path, title=f"step {self.step}: {cfg.snapshot_sampler}, {cfg.snapshot_steps} steps (EMA)",
                           value_range=vr)
        return path

    # ------------------------------------------------------------------------------------- resume
    def load_state(self, ck: "ckpt_mod.LoadedCheckpoint") -> None:
        """Restore weights, EMA, optimizer, step, RNG states and history from a loaded checkpoint."""
        tensors = ck.tensors
        net_w = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        ema_w = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        ckpt_mod.load_weights(self.net, net_w, ck.path / ckpt_mod.MODEL_FILE)
        ckpt_mod.load_weights(self.ema, ema_w or net_w, ck.path / ckpt_mod.MODEL_FILE)
        self.optimizer.load_state_dict(ck.optimizer_state(self.optimizer))  # checked against this optimizer first
        st = ck.state
        self.step = self._saved_step = int(st["step"])
        self.history = [list(h) for h in st.get("loss_history", [])]
        win_sum, win_n = st.get("loss_window", [0.0, 0])
        self._win_sum = torch.tensor(float(win_sum), device=self.device, dtype=torch.float64)
        self._win_n = int(win_n)
        self.train_seconds = float(st.get("train_seconds", 0.0))
        if st.get("grad_scaler") and self.grad_scaler.is_enabled():
            self.grad_scaler.load_state_dict(st["grad_scaler"])
        rng = st.get("rng") or {}
        if len(rng.get("loss", [])) == self.world:
            try:  # an RNG state of another device type or length is a bad checkpoint, named as one
                self.loss_gen.set_state(torch.tensor(rng["loss"][self.rank], dtype=torch.uint8))
                torch.set_rng_state(torch.tensor(rng["torch"][self.rank], dtype=torch.uint8))
                if self.device.type == "cuda" and rng.get("cuda") and rng["cuda"][self.rank] is not None:
                    torch.cuda.set_rng_state(torch.tensor(rng["cuda"][self.rank], dtype=torch.uint8), self.device)
            except (RuntimeError, TypeError, ValueError, KeyError, IndexError) as err:
                raise ckpt_mod.CheckpointError(f"{ck.path / ckpt_mod.STATE_FILE}: rng states unusable on {self.device} "
                                               f"({err})") from None
        else:
            warnings.warn(
                f"checkpoint saved with {len(rng.get('loss', []))} process(es), resumed with {self.world}: the RNG "
                "streams are re-seeded from (seed, rank, step), so the run is not bit-identical to an uninterrupted one",
                stacklevel=2,
            )
            self.loss_gen.manual_seed(_mix(self.config.seed, "loss", self.rank, self.step))
            torch.manual_seed(_mix(self.config.seed, "torch", self.rank, self.step))

    @classmethod
    def resume(cls, path: str | os.PathLike, *, data: Any = None, out: str | os.PathLike | None = None,
               **overrides: Any) -> "Trainer":
        """A Trainer restored from a checkpoint or run folder, ready to ``fit()`` on.

        ``overrides`` replace TrainConfig fields (e.g. ``steps`` to train further, ``device``,
        ``progress``); ``data`` is needed when the run trained on a plain tensor (no data config);
        ``out`` defaults to the run folder the checkpoint lives in.
        """
        ck = ckpt_mod.load_checkpoint(path, ema=False)
        ck.model.requires_grad_(True).train()  # the loader returns a frozen inference model
        cfg_dict = dict(ck.config.get("train") or {})
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {unknown}; valid: {[f.name for f in dataclasses.fields(TrainConfig)]}")
        try:  # the stored settings alone first (the loss they name included), so that an error in the file is named as one
            stored = TrainConfig(**cfg_dict)
            from .losses import get_loss

            get_loss(stored.loss, **stored.loss_kwargs)
        except (TypeError, ValueError) as err:
            raise ckpt_mod.CheckpointError(f"{ck.path / ckpt_mod.CONFIG_FILE}: bad trainer config: {err}") from None
        cfg_dict.update(overrides)
        cfg = TrainConfig(**cfg_dict)
        if data is None:
            data = _data_from_config(ck)
        run_dir = out if out is not None else (ck.path.parent if ckpt_mod._STEP_DIR.match(ck.path.name) else ck.path)
        trainer = cls(ck.model, data, cfg, out=run_dir, net_name=ck.config["net"]["name"],
                      cond=ck.config.get("conditional"))
        trainer.load_state(ck)
        return trainer


def _data_from_config(ck: "ckpt_mod.LoadedCheckpoint") -> Any:
    cfg = ck.config.get("data")
    if cfg is None:
        raise ValueError(f"{ck.path}: the run trained on a plain tensor (no data config); pass data= to resume it")
    from .data import dataset_from_config

    try:
        return dataset_from_config(cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise ckpt_mod.CheckpointError(f"{ck.path / ckpt_mod.CONFIG_FILE}: cannot rebuild the data set {cfg!r}: {err}") from None


def _copy_module(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net)


# ------------------------------------------------------------------------------------------- helpers
def train_points(data: Tensor, sde: LinearSDE, *, steps: int = 3000, seed: int = 0, out: str | None = None,
                 batch_size: int = 512, lr: float = 2e-3, hidden: int = 256, depth: int = 3,
                 progress: bool | None = None, **config: Any) -> ScoreModel:
    """Train an MLP score model on points ``data`` (N, D); returns the EMA model (eval mode).

    The parameterisation is :func:`default_parameterization` (EDM preconditioning for VE/EDM, with
    ``sigma_data`` = the data's std); the loss ``edm`` for it, else ``dsm``.
    """
    from .nets import build_net

    torch.manual_seed(seed)
    param, noise_input = default_parameterization(sde)
    net = build_net("mlp", dim=data.shape[1], hidden=hidden, depth=depth)
    sigma_data = data_std(data)
    model = ScoreModel(net, sde, param, noise_input=noise_input, sigma_data=sigma_data)
    loss = config.pop("loss", "edm" if param == "edm" else "dsm")
    if loss == "edm":
        config["loss_kwargs"] = {"sigma_data": sigma_data, **config.get("loss_kwargs", {})}
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, loss=loss, progress=progress,
                      ckpt_every=0, verbose=False, **config)
    trainer = Trainer(model, data, cfg, out=out, net_name="mlp")
    trainer.fit()
    return trainer.ema_model()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `scoresde train` (python -m scoresde train --help)")
