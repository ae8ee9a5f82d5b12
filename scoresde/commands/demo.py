"""``scoresde demo``: the main job of the quick start.

Trains a small MLP score model on a built-in 2-D data set (about a minute on a CPU), samples it
with several samplers, prints a comparison table (sliced Wasserstein to fresh data with its noise
floor, NFE, wall time) and writes a plot. ``--exact`` skips training and samples the exact score
of the data's Gaussian mixture instead.
"""

from __future__ import annotations

import os
import time

from . import check_output_dir, int_arg

HELP = "train a small model on 2-D data, sample it with several samplers, print a comparison and write a plot"

# pc with score_sde's batch-mean Langevin norms: the per-sample default is unstable in 2-D (docs/samplers.md).
FLOOR_REPEATS = 10
DEFAULT_SAMPLERS = "euler_maruyama:500,pc:250:norm=batch,ode:0,heun:10,ddim:20,dpmpp_2m:10,dpmpp_3m:10,unipc:10,adaptive_sde:0"


def add_arguments(p) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (checkpoint, samples, plot, table)")
    p.add_argument("--train-steps", type=int_arg(1), default=2000, help="training steps (MLP 128 wide, 2 blocks, batch 256)")
    from scoresde.sde import SDES

    p.add_argument("--sde", default="vp", choices=SDES.names(), help="the SDE")
    p.add_argument("--samplers", default=DEFAULT_SAMPLERS,
                   help="comma-separated NAME:STEPS[:KEY=VALUE...] (STEPS 0 = the sampler's default or adaptive; "
                        "options as in scoresde.sample, e.g. pc:250:norm=batch or ddim:20:eta=1)")
    p.add_argument("-n", type=int_arg(1), default=2000, help="samples per sampler")
    p.add_argument("--seed", type=int_arg(0), default=0, help="seed for training and sampling")
    p.add_argument("--exact", action="store_true", help="skip training: sample the exact mixture score")
    p.add_argument("--threads", type=int_arg(0), default=0, help="torch threads (0 = torch's default)")


def run(args) -> int:
    import torch

    import scoresde
    from scoresde._utils import atomic_write_text
    from scoresde.metrics import noise_floor, sliced_wasserstein

    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(check_output_dir(args.out), exist_ok=True)
    sde = scoresde.sde.make_sde(args.sde)
    gm = scoresde.GaussianMixture(
        [0.1, 0.2, 0.3, 0.4], [[-3.0, -3.0], [-3.0, 3.0], [3.0, -3.0], [3.0, 3.0]], [0.3, 0.5, 0.4, 0.6]
    )
    if args.exact:
        model = gm.model(sde)
        what = "exact mixture score"
    else:
        model, what = _train(args, sde, gm)

    plan = _plan(args.samplers)

    n = args.n
    ref = gm.sample(n, generator=torch.Generator().manual_seed(10_000 + args.seed))
    # The floor: SW2 between two independent exact sets of n, over FLOOR_REPEATS pairs (one pair
    # alone varies by ~30% in 2-D at n = 2000); ratios are SW2 / the floor's rms.
    fl = noise_floor(sliced_wasserstein, gm, n, repeats=FLOOR_REPEATS,
                     generator=torch.Generator().manual_seed(20_000 + args.seed))
    floor = fl.rms
    rows, results = [], {}
    print(f"\nSampling {n} points per sampler from the {what} ({type(sde).__name__}); noise floor (two exact sets "
          f"of {n}, {FLOOR_REPEATS} pairs): SW2 = {fl.mean:.4f} +- {fl.std:.4f}\n")
    for label, name, steps, opts in plan:
        t0 = time.perf_counter()
        res = scoresde.sample(model, sde, (n, 2), name, steps, generator=torch.Generator().manual_seed(args.seed), **opts)
        wall = time.perf_counter() - t0
        sw = sliced_wasserstein(res.x, ref)
        results[label] = res.x
        fixed = scoresde.samplers.get(name).traits(opts).fixed_grid
        rows.append((label, steps if fixed else "adaptive", res.nfe, sw, sw / floor, wall))
    width = max(15, *(len(r[0]) for r in rows))
    header = f"| {'sampler':<{width}} | {'steps':>8} | {'NFE':>6} | {'SW2':>7} | {'SW2/floor':>9} | {'time (s)':>8} |"
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for name, steps, nfe, sw, ratio, wall in rows:
        lines.append(f"| {name:<{width}} | {steps!s:>8} | {nfe:>6} | {sw:>7.4f} | {ratio:>9.2f} | {wall:>8.2f} |")
    table = "\n".join(lines)
    print(table)
    atomic_write_text(os.path.join(args.out, "comparison.md"),
                      f"Samples from the {what} ({type(sde).__name__}), n = {n}, floor SW2 = {fl.mean:.4f} +- {fl.std:.4f} "
                      f"(rms {floor:.4f}, {FLOOR_REPEATS} pairs of exact sets)\n\n{table}\n")
    png = os.path.join(args.out, "comparison.png")
    _plot(png, ref, results, rows)
    print(f"\nwrote {png} and {os.path.join(args.out, 'comparison.md')}")
    return 0


def _plan(text: str):
    """Parse NAME:STEPS[:KEY=VALUE...] items into (label, name, steps, options)."""
    import ast

    import scoresde

    plan = []
    for item in text.split(","):
        name, *rest = [p.strip() for p in item.split(":")]
        spec = scoresde.samplers.get(name)  # raises with the list of valid names
        steps = rest[0] if rest else ""
        try:
            steps = int(steps) if steps else 0
        except ValueError:
            raise ValueError(f"--samplers: {item!r}: STEPS must be an integer; got {steps!r}") from None
        if steps < 0:
            raise ValueError(f"--samplers: {item!r}: STEPS must be >= 0 (0: the sampler's default); got {steps}")
        opts = {}
        for kv in rest[1:]:
            key, eq, value = kv.partition("=")
            if not eq:
                raise ValueError(f"--samplers: {item!r}: options are KEY=VALUE; got {kv!r}")
            try:
                opts[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                opts[key] = value  # a bare word: a string option such as norm=batch
        label = name + "".join(f" {k}={v}" for k, v in opts.items())
        plan.append((label, name, steps if steps > 0 else spec.default_steps, opts))
    return plan


def _train(args, sde, gm):
    """Train an MLP on samples of the mixture with the library's trainer."""
    from scoresde.train import train_points

    t0 = time.perf_counter()
    model = train_points(gm.sample(20000, generator=torch_gen(args.seed)), sde, steps=args.train_steps,
                         seed=args.seed, hidden=128, depth=2, batch_size=256, out=os.path.join(args.out, "model"))
    print(f"trained an MLP score model for {args.train_steps} steps in {time.perf_counter() - t0:.0f} s")
    return model, "trained MLP"


def torch_gen(seed):
    import torch

    return torch.Generator().manual_seed(seed)


def _plot(path, ref, results, rows):
    from scoresde.plots import pyplot, save_figure

    plt = pyplot()
    k = len(results) + 1
    cols = min(k, 5)
    nrows = (k + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3 * cols, 3 * nrows), squeeze=False)
    panels = [("data (exact)", ref, None)] + [(name, results[name], r) for name, r in zip(results, rows, strict=True)]
    for ax, (title, x, r) in zip(axes.flat, panels, strict=False):  # more axes than panels
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1, alpha=0.4)
        if r is not None:
            title = f"{title}\nNFE {r[2]}, SW2/floor {r[4]:.2f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-7, 7)
        ax.set_ylim(-7, 7)
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
