"""Write a time-grid file: an optimised grid for a sampler and budget, a published grid, or a standard one.

The file is JSON (``scoresde.grids.load_schedule`` reads it; ``sample(schedule=grid)`` takes
the loaded grid). Examples:

    # GITS-style optimisation for ipndm at 10 NFE on the exact 2-D mixture (VP); prints the cost
    scoresde schedule --problem gmm2d-vp --sampler ipndm --nfe 10 --out ipndm10.json
    # the same for a trained checkpoint (its own SDE; the teacher uses the network)
    scoresde schedule --problem ckpt:runs/moons --sampler "unipc(order=3)" --nfe 10 --out grid.json
    # Align Your Steps (SD 1.5 shape) mapped onto the problem's SDE, 9 steps
    scoresde schedule --problem gmm2d-vp --published ays_sd15 --steps 9 --out ays9.json
"""

from __future__ import annotations

import argparse
import json

from . import int_arg

HELP = "write a time-grid file: optimised for a sampler and NFE budget (GITS-style), published (AYS) or standard"
DESCRIPTION = __doc__


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's line breaks and show defaults."""


def add_arguments(p) -> None:
    p.formatter_class = _Formatter
    from scoresde.grids import OBJECTIVES, PUBLISHED
    from scoresde.schedules import SCHEDULES

    p.add_argument("--problem", required=True, help="gmm2d|gmm16d|gmm64d with -vp|-subvp|-ve|-edm, or ckpt:PATH "
                   "(gives the SDE and the model)")
    p.add_argument("--out", required=True, help="the grid file to write (JSON)")
    p.add_argument("--sampler", default=None, help="sampler to optimise for, with options, e.g. 'unipc(order=3)'")
    p.add_argument("--nfe", type=int_arg(1), default=None, help="network evaluations of a run, the final denoising step included")
    p.add_argument("--no-denoise", action="store_true", help="budget without the final denoising step")
    p.add_argument("--published", default=None, choices=sorted(PUBLISHED), help="write this published grid instead")
    p.add_argument("--schedule", default=None, choices=SCHEDULES, help="write this standard grid instead")
    p.add_argument("--steps", type=int, default=None, help="steps of a --published or --schedule grid")
    p.add_argument("--n-samples", type=int_arg(1), default=256, help="x_T the grid is fitted on")
    p.add_argument("--n-validate", type=int_arg(0), default=256, help="other x_T it is scored on (0: none)")
    p.add_argument("--candidates", type=int_arg(1), default=120, help="intervals of the fine log-SNR candidate grid")
    p.add_argument("--cost", default="euler", choices=["euler", "sampler"], help="one-step cost of the dynamic programme")
    p.add_argument("--objective", default="mean", choices=OBJECTIVES, help="reduction of the per-sample pathwise errors")
    p.add_argument("--no-refine", action="store_true", help="stop after the dynamic programme")
    p.add_argument("--seed", type=int_arg(0), default=0, help="seed of the fitted x_T (validation uses seed + 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int_arg(0), default=1, help="torch CPU threads (0 = torch's default)")


def run(args) -> int:
    import torch

    from scoresde.bench import parse_entries
    from scoresde.bench.problems import get_problem
    from scoresde.grids import TimeGrid, optimize_schedule, published_grid
    from scoresde.schedules import make_grid

    if args.threads:
        torch.set_num_threads(args.threads)
    from scoresde.distributed import pick_device

    pick_device(args.device)  # checked in every mode (only the optimiser uses it)
    modes = [m for m in ("published", "schedule", "sampler") if getattr(args, m)]
    if len(modes) != 1:
        raise ValueError(f"give exactly one of --sampler (optimise), --published or --schedule; got {modes or 'none'}")
    problem = get_problem(args.problem)
    sde = problem.sde
    if args.published or args.schedule:
        if args.steps is None:
            if args.schedule:
                raise ValueError("--schedule needs --steps")
        if args.published:
            grid = published_grid(args.published, sde, args.steps)
        else:
            grid = TimeGrid(make_grid(sde, args.steps, args.schedule), {"source": args.schedule})
    else:
        if args.nfe is None:
            raise ValueError("--sampler needs --nfe (the budget of network evaluations)")
        (entry,) = parse_entries(args.sampler)
        model = problem.make_model(torch.device(args.device))
        grid = optimize_schedule(model, sde, entry.sampler, args.nfe, options=entry.options, denoise=not args.no_denoise,
                                 n_samples=args.n_samples, n_validate=args.n_validate, candidates=args.candidates,
                                 cost=args.cost, objective=args.objective, refine=not args.no_refine,
                                 shape=problem.shape, seed=args.seed, device=args.device, progress=print)
    grid.info["problem"] = args.problem
    grid.save(args.out, sde=sde)
    print(f"wrote {args.out}: {grid.steps} steps, t = {', '.join(f'{t:.6g}' for t in grid)}")
    for key in ("fit_error", "validation_error", "cost"):
        if key in grid.info:
            print(f"{key}: {json.dumps(grid.info[key])}")
    return 0
