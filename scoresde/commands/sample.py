"""Draw samples from a trained checkpoint with any registered sampler.

Writes an .npz with 'samples' (in data space, through the stored scaler), 'seeds' (one per
sample: sample i does not depend on --batch-size), 'labels' (class-conditional nets) and 'meta'
(a JSON string: sampler, steps, NFE, seed, checkpoint, timing), and a PNG next to it (scatter
for 2-D points, a grid for images; --png PATH elsewhere, --no-png none). --seeds gives the
per-sample seeds themselves (EDM's generate.py syntax: 0-63, or 0,5,7-9). --class K (a list,
or all) draws -n samples of each class and writes a grid per class (OUT-classK.png); --guidance W
samples with classifier-free guidance (a model trained with --label-dropout). --png-dir DIR
writes one PNG per sample (images), e.g. for an external FID tool. Under torchrun the seeds are
split over the processes (sample i depends only on its seed) and rank 0 writes one file, equal to a
one-process run's at the same --batch-size. Examples:

    scoresde sample --checkpoint runs/moons --sampler dpmpp_2m --steps 20 -n 2000 --out moons.npz   # + moons.png
    torchrun --nproc_per_node 4 -m scoresde sample --checkpoint runs/digits --seeds 0-49999 --png-dir fid/ --out d.npz
    scoresde sample --checkpoint runs/digits-cfg --sampler dpmpp_2m --steps 20 --seeds 0-9 --class all \
        --guidance 3 --out cfg.npz                         # cfg.png (a row per class) + cfg-class0.png ...
    scoresde sample --checkpoint runs/digits --seeds 0-9999 --batch-size 1000 --out d.npz --png-dir pngs/
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time

from . import check_output_dir, check_output_file, int_arg

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
    p.add_argument("-n", type=int, default=None,
                   help="number of samples (per class with --class; default: 1000, or the number of --seeds)")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--png", default=None,
                   help="the PNG to write (scatter for 2-D, image grid for images; default: OUT with .png)")
    p.add_argument("--no-png", action="store_true", help="write only the .npz")
    p.add_argument("--seed", type=int_arg(0), default=None, help="seed of the per-sample seeds (default 0)")
    p.add_argument("--seeds", default=None, metavar="LIST",
                   help="the per-sample seeds themselves, e.g. 0-63 or 0,5,7-9 (ranges inclusive; instead of "
                        "--seed; -n defaults to their number)")
    p.add_argument("--batch-size", type=int, default=0, help="samples per batch (0: all at once)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--schedule", default=None, choices=list(SCHEDULES), help="time grid (default: the sampler's)")
    p.add_argument("--no-denoise", action="store_true", help="skip the final Tweedie denoising step")
    p.add_argument("--raw-weights", action="store_true", help="use the trained weights instead of their EMA")
    p.add_argument("--label", type=int, default=None,
                   help="class label of all samples, for a class-conditional net (default: cycle through all classes)")
    p.add_argument("--class", dest="classes", default=None, metavar="K",
                   help="class-conditional nets: -n samples of each class K (e.g. 3, 0,2,5-7 or all), one grid per "
                        "class; the same seeds for every class")
    p.add_argument("--guidance", default=None, metavar="W",
                   help="classifier-free guidance weight w >= 0: (1 + w) D(x | y) - w D(x | null), 2 NFE per "
                        "evaluation (needs a model trained with --conditional --label-dropout P > 0; 0 = "
                        "conditional, no guidance)")
    p.add_argument("--png-dir", default=None, metavar="DIR",
                   help="also write one PNG per sample (images only) into DIR: 000000.png, ... in the order of "
                        "the .npz (for external FID tools)")
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
    from scoresde.plots import image_range, save_image_pngs, save_sample_figure
    from scoresde.random import make_seeds

    if args.threads:
        torch.set_num_threads(args.threads)
    explicit = None if args.seeds is None else parse_int_list(args.seeds, "--seeds")
    if explicit is not None and args.seed is not None:
        raise ValueError(f"give --seed (a seed of the per-sample seeds) or --seeds (the seeds themselves), not both; "
                         f"got --seed {args.seed} and --seeds {args.seeds!r}")
    if explicit is not None and args.n is not None and args.n != len(explicit):
        raise ValueError(f"-n {args.n} disagrees with --seeds {args.seeds!r} ({len(explicit)} seeds); drop -n")
    n = len(explicit) if explicit is not None else (1000 if args.n is None else args.n)
    if n < 1 or args.batch_size < 0:
        raise ValueError(f"-n must be >= 1 and --batch-size >= 0; got -n {n}, --batch-size {args.batch_size}")
    weight = None if args.guidance is None else parse_guidance(args.guidance)
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out must name a .npz file; got {args.out!r}")
    check_output_file(args.out)
    if args.png:
        check_output_file(args.png, "--png")
    if args.png_dir:
        check_output_dir(args.png_dir, "--png-dir")
    from scoresde import distributed

    device = pick_device(args.device, distributed.env()[2])
    rank, world = distributed.init(device)  # under torchrun: each rank samples its share of the seeds
    ck = load_checkpoint(args.checkpoint, device=device, ema=not args.raw_weights)
    shape = ck.data_shape
    if not shape:
        raise ValueError(f"{ck.path}: config.json has no data_shape; cannot tell what to sample")
    if args.png_dir and len(shape) != 3:
        raise ValueError(f"--png-dir writes images, but {ck.path} samples points of shape {tuple(shape)}")
    spec = samplers.get(args.sampler)
    steps = spec.default_steps if args.steps is None else args.steps
    options = dict(args.option)
    seeds = (torch.tensor(explicit, dtype=torch.int64) if explicit is not None
             else make_seeds(n, generator=torch.Generator().manual_seed(args.seed or 0)))
    classes = _classes(ck, args)
    if classes is not None:  # n samples of each class, class-major, the same seeds for every class
        labels = torch.tensor(classes, dtype=torch.int64).repeat_interleave(n)
        seeds = seeds.repeat(len(classes))
    else:
        labels = _labels(ck, args, n)
    guidance = _guidance(ck, args, weight)
    total = seeds.shape[0]
    # Sample i depends only on its seed (and label), so the seeds can be split over ranks (EDM's
    # generate.py) and the gathered file equals a one-process run's.
    mine = torch.arange(total)[rank::world]
    bs = args.batch_size or total
    chunks, nfes = [], []
    t0 = time.perf_counter()
    for i in range(0, len(mine), bs):
        idx = mine[i:i + bs]
        s = seeds[idx]
        cond = {"y": labels[idx].to(device)} if labels is not None else None
        with torch.no_grad():  # sampling needs no autograd graph (the weights require grad)
            res = samplers.sample(ck.model, ck.sde, (len(s), *shape), args.sampler, steps, seeds=s, device=device,
                                  schedule=args.schedule, denoise=not args.no_denoise, progress=args.progress,
                                  cond=cond, guidance=guidance, **options)
        chunks.append(res.x.float().cpu())
        nfes.append(res.nfe)
    wall = time.perf_counter() - t0
    x = torch.cat(chunks)
    if world > 1:
        x, nfes, wall = _gather(x, mine, total, nfes, wall, world)
        distributed.shutdown()
        if rank != 0:
            return 0
    if ck.scaler is not None:
        x = ck.scaler.from_model(x)
    meta = {
        "checkpoint": str(ck.path), "step": ck.step, "sampler": args.sampler, "steps": steps, "options": options,
        "schedule": args.schedule, "denoise": not args.no_denoise, "ema": not args.raw_weights, "n": total,
        "seed": (args.seed or 0) if explicit is None else None, "seeds": args.seeds, "classes": classes,
        "guidance": None if weight is None else {"method": "cfg", "w": weight},
        "batch_size": bs, "nfe_per_batch": nfes, "wall_time": wall, "device": str(device),
        "sde": ck.config.get("sde"), "model": ck.config.get("model"), "scaler": ck.config.get("scaler"),
        "data": ck.config.get("data"), "data_space": ck.scaler is not None,
    }
    arrays = {"samples": x.numpy().astype(np.float32), "seeds": seeds.numpy(), "meta": np.array(json.dumps(meta))}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(args.out, buf.getvalue())
    guided = "" if weight is None else f", guidance w={weight:g}"
    print(f"wrote {total} samples of shape {tuple(shape)} to {args.out} ({args.sampler}, {steps} steps, "
          f"{nfes[0]} NFE per batch{guided}, {wall:.2f} s)")
    vr = image_range(ck.scaler, tuple(shape)) if len(shape) == 3 else None
    png = None if args.no_png else (args.png or os.path.splitext(args.out)[0] + ".png")
    if png:
        title = f"{args.sampler}, {steps} steps, NFE {nfes[0]}{guided} (step {ck.step})"
        per_row = None
        if classes is not None and len(shape) == 3 and len(classes) > 1:
            # one row per class: its first (up to) 16 samples
            per_row = min(n, 16)
            keep = torch.arange(per_row).repeat(len(classes)) + torch.arange(len(classes)).repeat_interleave(per_row) * n
            save_sample_figure(x[keep], png, title=f"classes {_class_text(classes)} (rows); {title}", value_range=vr,
                               cols=per_row)
        else:
            save_sample_figure(x, png, title=title, value_range=vr)
        written = [png]
        if classes is not None:  # a grid per class: OUT-classK.png
            stem, ext = os.path.splitext(png)
            for j, k in enumerate(classes):
                path = f"{stem}-class{k}{ext or '.png'}"
                save_sample_figure(x[j * n:(j + 1) * n], path, title=f"class {k}: {title}", value_range=vr)
                written.append(path)
        print(f"wrote {written[0]}" + (f" and {len(written) - 1} per-class grids ({written[1]}, ...)"
                                       if len(written) > 1 else ""))
    if args.png_dir:
        save_image_pngs(x, args.png_dir, value_range=vr)
        print(f"wrote {total} PNGs to {args.png_dir} (000000.png ... {total - 1:06d}.png, the order of the .npz)")
    return 0


def _gather(x, mine, total, nfes, wall, world):
    """All ranks' samples in seed order on every rank (gloo or NCCL, through torch.distributed objects)."""
    import torch
    import torch.distributed as dist

    parts = [None] * world
    dist.all_gather_object(parts, (mine, x, nfes, wall))
    out = torch.empty((total, *x.shape[1:]), dtype=x.dtype)
    for idx, xs, _, _ in parts:
        out[idx] = xs
    return out, [n for p in parts for n in p[2]], max(p[3] for p in parts)


def parse_int_list(text: str, flag: str) -> list[int]:
    """EDM's ``parse_int_list``: '0-3,7,9-10' -> [0, 1, 2, 3, 7, 9, 10] (ranges inclusive; integers >= 0)."""
    out: list[int] = []
    for part in str(text).split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo = int(a)
            hi = int(b) if sep else lo
        except ValueError:
            raise ValueError(f"{flag} must be integers and ranges like 0-63 or 0,5,7-9 (ranges inclusive); "
                             f"got {text!r} (bad item {part.strip()!r})") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"{flag}: {part.strip()!r} is not a range of integers >= 0 (write LO-HI with LO <= HI); "
                             f"got {text!r}")
        out.extend(range(lo, hi + 1))
    return out


def parse_guidance(text: str) -> float:
    """The --guidance weight: a finite number >= 0."""
    try:
        w = float(text)
    except ValueError:
        w = float("nan")
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"--guidance must be a finite number >= 0 (the classifier-free guidance weight w; "
                         f"0 = conditional without guidance); got {text!r}")
    return w


def _num_classes(ck) -> int:
    return int((ck.config["net"]["kwargs"] or {}).get("num_classes") or 0)


def _class_text(classes: list[int]) -> str:
    return ", ".join(map(str, classes)) if len(classes) <= 12 else f"{classes[0]}..{classes[-1]} ({len(classes)})"


def _classes(ck, args) -> list[int] | None:
    if args.classes is None:
        return None
    if not ck.config.get("conditional"):
        raise ValueError(f"--class {args.classes} given, but {ck.path} holds an unconditional model (train one with "
                         "--conditional)")
    if args.label is not None:
        raise ValueError(f"give --class or --label, not both; got --class {args.classes!r} and --label {args.label}")
    k = _num_classes(ck)
    if str(args.classes).strip().lower() == "all":
        return list(range(k))
    classes = parse_int_list(args.classes, "--class")
    bad = [c for c in classes if c >= k]
    if bad:
        raise ValueError(f"--class {args.classes}: class {bad[0]} is out of range; this model has classes 0..{k - 1} "
                         "(or 'all')")
    return classes


def _guidance(ck, args, weight: float | None):
    if weight is None:
        return None
    if not ck.config.get("conditional"):
        raise ValueError(f"--guidance {args.guidance} needs a class-conditional model, but {ck.path} holds an "
                         "unconditional one (train one with --conditional --label-dropout P)")
    p = float((ck.config.get("train") or {}).get("label_dropout") or 0.0)
    if weight > 0 and p <= 0:
        raise ValueError(f"--guidance {args.guidance} needs a model trained with label dropout (its null label is the "
                         f"unconditional model), but {ck.path} was trained with label_dropout=0; train with "
                         "--label-dropout P (0.1-0.2), or use --guidance 0")
    from scoresde.guidance import ClassifierFreeGuidance

    return ClassifierFreeGuidance(weight)


def _labels(ck, args, n: int):
    import torch

    if not ck.config.get("conditional"):
        if args.label is not None:
            raise ValueError(f"--label {args.label} given, but {ck.path} holds an unconditional model")
        return None
    k = _num_classes(ck)
    if args.label is not None:
        if not 0 <= args.label < k:
            raise ValueError(f"--label must lie in [0, {k - 1}] for this model; got {args.label}")
        return torch.full((n,), args.label, dtype=torch.int64)
    return torch.arange(n, dtype=torch.int64) % k
