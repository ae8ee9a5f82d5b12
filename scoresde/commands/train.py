"""Train a score model on a built-in data set, an array file or an image folder.

Writes a run folder: step-<N>/ checkpoints (the newest named by the file 'latest') and, with
--snapshot-every, snapshots/step-<N>.png. --resume continues the run in --out exactly where its
last checkpoint left it (bit-identical on the same device). Under torchrun the global batch is
split across the processes (data parallel; rank 0 writes the files). Examples:

    scoresde train --data moons --net mlp --sde vp --steps 3000 --out runs/moons
    scoresde train --data digits --net unet --conditional --label-dropout 0.2 --steps 3000 --out runs/digits-cfg
    torchrun --nproc_per_node 4 -m scoresde train --data digits --net unet --steps 20000 --out runs/digits
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time

from . import check_output_dir, int_arg

HELP = "train a score model (MLP or U-Net) by denoising score matching; checkpoints, snapshots, exact resume, torchrun"
DESCRIPTION = __doc__


def _registry_names():
    """(datasets, nets, losses, weightings, samplers, parameterizations, noise inputs) from the registries."""
    from scoresde import samplers
    from scoresde.data import DATASETS
    from scoresde.losses import LOSSES, WEIGHTINGS
    from scoresde.model import NOISE_INPUTS, PARAMETERIZATIONS
    from scoresde.nets import NETS

    return list(DATASETS), list(NETS), list(LOSSES), list(WEIGHTINGS), samplers.available(), PARAMETERIZATIONS, NOISE_INPUTS


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"hidden\": 128}}'; got {text!r}")
    return value


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's line breaks (its examples) and show defaults."""


def add_arguments(p) -> None:
    p.formatter_class = _Formatter
    datasets, nets, losses, weightings, sampler_names, params, noise_inputs = _registry_names()
    from scoresde.train import AMP_MODES, TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("data and model")
    g.add_argument("--data", default="moons", metavar="NAME|PATH",
                   help=f"a built-in data set ({', '.join(datasets)}), a .npy/.npz array file or an image folder")
    g.add_argument("--n-data", type=int_arg(1), default=None,
                   help="number of examples to draw/load (None: the data set's default)")
    g.add_argument("--data-seed", type=int_arg(0), default=0, help="seed of the data set draw")
    g.add_argument("--net", default="mlp", choices=nets, help="network architecture")
    g.add_argument("--net-kwargs", type=_json_arg, default={}, metavar="JSON",
                   help="more net constructor arguments, e.g. '{\"hidden\": 128, \"depth\": 4}' "
                        "(data-shape arguments such as dim / in_channels / resolution are filled in)")
    g.add_argument("--conditional", action="store_true", help="class-conditional net trained on the data set's labels")
    g.add_argument("--label-dropout", type=float, default=d.label_dropout, metavar="P",
                   help="with --conditional: replace each label by the null label with probability P, so that the "
                        "net also learns the unconditional model (classifier-free guidance; 0.1-0.2 is usual)")
    from scoresde.sde import SDES

    g.add_argument("--sde", default="vp", choices=SDES.names(), help="the forward SDE")
    g.add_argument("--sde-kwargs", type=_json_arg, default={}, metavar="JSON", help="SDE arguments, e.g. '{\"beta_max\": 20}'")
    g.add_argument("--param", default="auto", choices=["auto", *params],
                   help="what the net predicts (auto: eps for vp/subvp, edm-preconditioned for ve/edm)")
    g.add_argument("--noise-input", default="auto", choices=["auto", *noise_inputs],
                   help="what the net receives as c_noise (auto: t for eps, ln(sigma)/4 for edm)")
    g.add_argument("--sigma-data", default="auto",
                   help="EDM's data std (param edm and loss edm); auto: the std of the training data in model space")

    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="auto", choices=["auto", *losses], help="auto: edm for --param edm, else dsm")
    g.add_argument("--weighting", default=None, choices=weightings,
                   help="dsm weighting lambda(t) (None: the loss's default, sigma2)")
    g.add_argument("--importance-sampling", action="store_true", help="dsm: t ~ g^2/sigma^2 (likelihood training)")
    g.add_argument("--loss-kwargs", type=_json_arg, default={}, metavar="JSON", help="more loss options")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps, help="total optimiser steps (with --resume: train up to this)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (split across torchrun processes)")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear LR warm-up steps")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0 = off)")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay of the weights")
    g.add_argument("--amp", default=d.amp, choices=AMP_MODES, help="autocast precision (CUDA only)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the init, data order and loss noise")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--threads", type=int_arg(0), default=0, help="torch CPU threads (0 = torch's default)")

    g = p.add_argument_group("outputs")
    g.add_argument("--out", required=True, help="run folder (checkpoints step-N/, latest, snapshots/)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    g.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="checkpoint period in steps (0: only at the end)")
    g.add_argument("--keep", type=int, default=d.keep, help="checkpoints kept (0 = all)")
    g.add_argument("--snapshot-every", type=int, default=d.snapshot_every, help="PNG sample snapshot period (0 = none)")
    g.add_argument("--snapshot-sampler", default=d.snapshot_sampler, choices=sampler_names, help="sampler for snapshots")
    g.add_argument("--snapshot-steps", type=int, default=d.snapshot_steps, help="sampler steps for snapshots")
    g.add_argument("--snapshot-n", type=int, default=d.snapshot_n,
                   help="samples per snapshot (0: 2000 points / 64 images)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps per loss-history entry / log line")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bar (default: only on a terminal)")
    g.add_argument("--quiet", action="store_true", help="no log lines (errors only)")


def _build_sde(args):
    from scoresde.sde import make_sde

    return make_sde(args.sde, **args.sde_kwargs)


def _net_kwargs(args, dataset) -> dict:
    """The user's --net-kwargs plus the arguments that follow from the data's shape and labels."""
    from scoresde.nets import NETS

    params = NETS.get(args.net).defaults
    shape = tuple(dataset.x.shape[1:])
    kw = dict(args.net_kwargs)
    auto = {"dim": math.prod(shape)}
    if len(shape) == 3:
        auto.update(in_channels=shape[0], resolution=shape[1])
    if args.conditional:
        if getattr(dataset, "y", None) is None:
            raise ValueError(f"--conditional needs labels, but the data set {args.data!r} has none")
        auto["num_classes"] = int(dataset.y.max()) + 1
    for k, v in auto.items():
        if k in params and k not in kw:
            kw[k] = v
    return kw


def _train_config(args):
    from scoresde.train import TrainConfig

    return dict(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, ckpt_every=args.ckpt_every, keep=args.keep,
        snapshot_every=args.snapshot_every, snapshot_sampler=args.snapshot_sampler, snapshot_steps=args.snapshot_steps,
        snapshot_n=args.snapshot_n, label_dropout=args.label_dropout, seed=args.seed, device=args.device, amp=args.amp,
        log_every=args.log_every,
        progress=args.progress, verbose=not args.quiet,
    ), TrainConfig


def _positive(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be 'auto' or a positive number; got {text!r}")
    return value


def _fresh_trainer(args):
    import torch

    from scoresde.data import load_dataset
    from scoresde.model import ScoreModel
    from scoresde.nets import build_net
    from scoresde.train import Trainer, data_std, default_parameterization

    cfg_kw, TrainConfig = _train_config(args)
    dataset = load_dataset(args.data, n=args.n_data, seed=args.data_seed)
    sde = _build_sde(args)
    param, noise_input = default_parameterization(sde)
    param = param if args.param == "auto" else args.param
    noise_input = (noise_input if param == "edm" else "t") if args.noise_input == "auto" else args.noise_input
    loss = args.loss if args.loss != "auto" else ("edm" if param == "edm" else "dsm")
    loss_kwargs = dict(args.loss_kwargs)
    if args.weighting is not None:
        loss_kwargs["weighting"] = args.weighting
    if args.importance_sampling:
        loss_kwargs["importance_sampling"] = True
    sigma_data = data_std(dataset.x) if args.sigma_data == "auto" else _positive("--sigma-data", args.sigma_data)
    if loss == "edm" and "sigma_data" not in loss_kwargs:
        loss_kwargs["sigma_data"] = sigma_data
    torch.manual_seed(args.seed)  # the initial weights
    net = build_net(args.net, **_net_kwargs(args, dataset))
    model = ScoreModel(net, sde, param, noise_input=noise_input, sigma_data=sigma_data)
    cfg = TrainConfig(loss=loss, loss_kwargs=loss_kwargs, **cfg_kw)
    return Trainer(model, dataset, cfg, out=args.out, net_name=args.net, cond=args.conditional)


def _has_checkpoint(out: str) -> bool:
    return os.path.isfile(os.path.join(out, "latest"))


def run(args) -> int:
    import torch

    from scoresde.train import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    check_output_dir(args.out)
    if args.resume and _has_checkpoint(args.out):
        cfg_kw, _ = _train_config(args)
        # The model, loss, data and optimiser settings come from the checkpoint; these may change.
        keep = ("steps", "device", "progress", "verbose", "ckpt_every", "keep", "snapshot_every", "log_every")
        trainer = Trainer.resume(args.out, **{k: cfg_kw[k] for k in keep})
        # the data are re-read from the path recorded in the checkpoint: say which (docs/reliability.md)
        what = f"resumed {args.out} at step {trainer.step} (data: {trainer.data.name})"
    else:
        if _has_checkpoint(args.out) and not args.resume:
            raise ValueError(f"--out {args.out!r} already holds a run; pass --resume to continue it, or choose another --out")
        trainer = _fresh_trainer(args)
        what = f"training {args.net} on {args.data} ({trainer.x.shape[0]} examples of shape {tuple(trainer.x.shape[1:])})"
    say = trainer.is_main and not args.quiet
    if say:
        n_par = sum(p.numel() for p in trainer.net.parameters())
        print(f"{what}: {n_par:,} parameters, {type(trainer.model.sde).__name__}, param={trainer.model.parameterization}, "
              f"loss={trainer.config.loss}, device={trainer.device}, processes={trainer.world}", flush=True)
    t0 = time.perf_counter()
    # Ctrl-C / SIGTERM: finish the step in progress, save a resumable checkpoint, exit with one line.
    def stop(signum, frame):
        trainer.request_stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        hist = trainer.fit()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        trainer.close()
    if trainer.stop_reason is not None:
        if trainer.is_main:
            print(f"scoresde train: stopped by {trainer.stop_reason} at step {trainer.step}; saved a checkpoint in "
                  f"{args.out}: continue with --resume", file=sys.stderr, flush=True)
        return 130
    if say:
        last = f"{hist[-1][1]:.5f}" if hist else "n/a"
        print(f"done: step {trainer.step}, last loss {last}, {time.perf_counter() - t0:.1f} s; "
              f"checkpoint {os.path.join(args.out, 'latest')}", flush=True)
    return 0
