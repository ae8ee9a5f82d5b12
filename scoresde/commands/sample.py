"""Draw samples from a trained checkpoint with any registered sampler.

Writes an .npz with 'samples' (in data space, through the stored scaler), 'seeds' (one per
sample: sample i does not depend on --batch-size), 'labels' (class-conditional nets) and 'meta'
(a JSON string: sampler, steps, NFE, seed, checkpoint, timing), and a PNG next to it (scatter
for 2-D points, a grid for images; --png PATH elsewhere, --no-png none). Example:

    scoresde sample --checkpoint runs/moons --sampler dpmpp_2m --steps 20 -n 2000 --out moons.npz   # + moons.png
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

from . import check_output_file, int_arg

HELP = "draw samples from a trained checkpoint with any sampler; write .npz (data space) and a PNG"
DESCRIPTION = __doc__


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (VALUE as JSON, e.g. eta=0.5); got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string such as predictor=ancestral


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's line breaks (its examples) and show defaults."""


def add_arguments(p) -> None:
    p.formatter_class = _Formatter
    from scoresde import samplers
    from scoresde.schedules import SCHEDULES

    names = samplers.available()
    p.add_argument("--checkpoint", required=True, help="a run folder (its latest checkpoint) or a step-N folder")
    p.add_argument("--sampler", default="euler_maruyama" if "euler_maruyama" in names else names[0], choices=names,
                   help="the sampler")
    p.add_argument("--steps", type=int, default=None, help="grid intervals (default: the sampler's)")
    p.add_argument("-n", type=int, default=1000, help="number of samples")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--png", default=None,
                   help="the PNG to write (scatter for 2-D, image grid for images; default: OUT with .png)")
    p.add_argument("--no-png", action="store_true", help="write only the .npz")
    p.add_argument("--seed", type=int_arg(0), default=0, help="seed of the per-sample seeds")
    p.add_argument("--batch-size", type=int, default=0, help="samples per batch (0: all at once)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--schedule", default=None, choices=list(SCHEDULES), help="time grid (default: the sampler's)")
    p.add_argument("--no-denoise", action="store_true", help="skip the final Tweedie denoising step")
    p.add_argument("--raw-weights", action="store_true", help="use the trained weights instead of their EMA")
    p.add_argument("--label", type=int, default=None,
                   help="class label for a class-conditional net (default: cycle through all classes)")
    p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option (repeatable), e.g. --option eta=0.5")
    p.add_argument("--threads", type=int_arg(0), default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--progress", action="store_true", help="progress bar per batch")


def run(args) -> int:
    import numpy as np
    import torch

    from scoresde import samplers
    from scoresde._utils import atomic_write_bytes
    from scoresde.checkpoint import load_checkpoint
    from scoresde.distributed import pick_device
    from scoresde.plots import image_range, save_sample_figure
    from scoresde.random import make_seeds

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 1 or args.batch_size < 0:
        raise ValueError(f"-n must be >= 1 and --batch-size >= 0; got -n {args.n}, --batch-size {args.batch_size}")
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out must name a .npz file; got {args.out!r}")
    check_output_file(args.out)
    if args.png:
        check_output_file(args.png, "--png")
    device = pick_device(args.device, 0)
    ck = load_checkpoint(args.checkpoint, device=device, ema=not args.raw_weights)
    shape = ck.data_shape
    if not shape:
        raise ValueError(f"{ck.path}: config.json has no data_shape; cannot tell what to sample")
    spec = samplers.get(args.sampler)
    steps = spec.default_steps if args.steps is None else args.steps
    options = dict(args.option)
    seeds = make_seeds(args.n, generator=torch.Generator().manual_seed(args.seed))
    labels = _labels(ck, args)
    bs = args.batch_size or args.n
    chunks, nfes = [], []
    t0 = time.perf_counter()
    for i in range(0, args.n, bs):
        s = seeds[i:i + bs]
        cond = {"y": labels[i:i + bs].to(device)} if labels is not None else None
        with torch.no_grad():  # sampling needs no autograd graph (the weights require grad)
            res = samplers.sample(ck.model, ck.sde, (len(s), *shape), args.sampler, steps, seeds=s, device=device,
                                  schedule=args.schedule, denoise=not args.no_denoise, progress=args.progress,
                                  cond=cond, **options)
        chunks.append(res.x.float().cpu())
        nfes.append(res.nfe)
    wall = time.perf_counter() - t0
    x = torch.cat(chunks)
    if ck.scaler is not None:
        x = ck.scaler.from_model(x)
    meta = {
        "checkpoint": str(ck.path), "step": ck.step, "sampler": args.sampler, "steps": steps, "options": options,
        "schedule": args.schedule, "denoise": not args.no_denoise, "ema": not args.raw_weights, "n": args.n,
        "seed": args.seed, "batch_size": bs, "nfe_per_batch": nfes, "wall_time": wall, "device": str(device),
        "sde": ck.config.get("sde"), "model": ck.config.get("model"), "scaler": ck.config.get("scaler"),
        "data": ck.config.get("data"), "data_space": ck.scaler is not None,
    }
    arrays = {"samples": x.numpy().astype(np.float32), "seeds": seeds.numpy(), "meta": np.array(json.dumps(meta))}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.n} samples of shape {tuple(shape)} to {args.out} ({args.sampler}, {steps} steps, "
          f"{nfes[0]} NFE per batch, {wall:.2f} s)")
    png = None if args.no_png else (args.png or os.path.splitext(args.out)[0] + ".png")
    if png:
        vr = image_range(ck.scaler, tuple(shape)) if len(shape) == 3 else None
        save_sample_figure(x, png, title=f"{args.sampler}, {steps} steps, NFE {nfes[0]} (step {ck.step})",
                           value_range=vr)
        print(f"wrote {png}")
    return 0


def _labels(ck, args):
    import torch

    if not ck.config.get("conditional"):
        if args.label is not None:
            raise ValueError(f"--label {args.label} given, but {ck.path} holds an unconditional model")
        return None
    k = int((ck.config["net"]["kwargs"] or {}).get("num_classes") or 0)
    if args.label is not None:
        if not 0 <= args.label < k:
            raise ValueError(f"--label must lie in [0, {k - 1}] for this model; got {args.label}")
        return torch.full((args.n,), args.label, dtype=torch.int64)
    return torch.arange(args.n, dtype=torch.int64) % k
