"""What the sampler costs beside the network: overhead = wall / (NFE x one bare network call).

For every fixed-step sampler, each engine available here (``eager``: the sampler function itself;
``torch``, ``compiled``, ``fused``, ``graph``: scoresde.engine on the sampler's table) and several
networks (randomly initialised ``scoresde.nets.MLP`` on 2-D data, a small ``UNet`` on 1x8x8
images), it measures the bare network time, the sampler time (the engines take the table from
``spec.table``, which caches it per SDE, grid and options: the untimed warm-up run builds it, as a
user's first ``sample()`` call on a grid does; the eager samplers plan their coefficients inside
the timed region; the grid is built outside), the overhead ratio and samples/s. Optional k-diffusion rows
(``sample_euler``, ``sample_euler_ancestral``, ``sample_heun``, ``sample_dpmpp_2m``,
``sample_lms``) use the same network as an eps denoiser ``D(x, sigma) = x - sigma net(x, sigma)``
on a Karras grid, when ``k_diffusion/sampling.py`` can be loaded (it is loaded from its file, its
``torchsde`` and ``utils`` imports stubbed: the five samplers use neither).

Timing: one torch thread. On CPU the clock is the thread's CPU time (``time.thread_time``), which
other processes on shared cores do not inflate; on CUDA it is wall time with synchronisation.
Every run is bracketed by two bare-network measurements; after one warm-up run (which also
compiles, for ``compiled``; compile time is not counted) ``--reps`` runs are made, and the overhead
is the best sampler time over (NFE x the best bare call): other processes on shared cores only add
time. The median of the bracketed per-run ratios is in the CSV beside it.

    python benchmarks/overhead.py                          # all settings, all engines here
    python benchmarks/overhead.py --settings mlp32x256 --reps 5
    PYTHONPATH=/path/to/old/checkout python benchmarks/overhead.py --engines eager --label before

``--own`` times the samplers with a network that returns a fixed tensor at no cost instead: the
sampler's own time, and the overhead estimate ``1 + own / (NFE x bare call)``. Short runs, so
they are not disturbed by other processes the way second-long runs of big networks are; they do
not see what the sampler's operations cost the network through the caches (a few percent at the
smallest setting, where both columns are given).

Writes OUT/overhead_LABEL.csv and OUT/overhead_LABEL.md (OUT: runs/overhead by default).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
import types
import warnings

import torch

import scoresde
from scoresde import VPSDE, ScoreModel
from scoresde.nets import MLP, UNet
from scoresde.random import PerSampleNoise
from scoresde.samplers import get, specs
from scoresde.schedules import make_grid

warnings.filterwarnings("ignore", message="pc: norm=.per_sample.")  # pc's low-dimension warning, known here

SETTINGS = {
    # name: (network factory, sample shape, steps)
    "mlp32x256": (lambda: MLP(2, hidden=32, depth=2), (256, 2), 100),
    "mlp128x4096": (lambda: MLP(2, hidden=128, depth=2), (4096, 2), 50),
    "mlp128x65536": (lambda: MLP(2, hidden=128, depth=2), (65536, 2), 10),
    "unet8x16": (lambda: UNet(in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1, resolution=8),
                 (16, 1, 8, 8), 20),
}
# Samplers whose step count is not the NFE budget: ald makes n_steps_each calls at each of steps + 1 levels.
SPECIAL = {"ald": ({"n_steps_each": 10}, lambda steps: max(steps // 10 - 1, 1))}
EXTRA_ROWS = [("pc", {"corrector": "ald"}, "pc(corrector=ald)")]
KD_SAMPLERS = ("sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpmpp_2m", "sample_lms")


def fixed_step_samplers() -> list[tuple[str, dict, str]]:
    rows = []
    for spec in specs():
        if spec.fixed_grid and spec.name not in ("ode", "ode_scipy"):
            opts = SPECIAL.get(spec.name, ({}, None))[0]
            rows.append((spec.name, opts, spec.name))
    return rows + [r for r in EXTRA_ROWS if r[0] in {s.name for s in specs()}]


def load_kdiffusion():
    """k-diffusion's sampling module from its file, or None (with the reason printed)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        print("k-diffusion: not installed (pip install --no-deps k-diffusion); no k-diffusion rows")
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "sampling.py")
    pkg = types.ModuleType("_kd")
    pkg.__path__ = []
    utils = types.ModuleType("_kd.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    sys.modules.setdefault("torchsde", types.ModuleType("torchsde"))
    sys.modules["_kd"], sys.modules["_kd.utils"] = pkg, utils
    mspec = importlib.util.spec_from_file_location("_kd.sampling", path)
    mod = importlib.util.module_from_spec(mspec)
    try:
        mspec.loader.exec_module(mod)
    except Exception as err:  # a version whose sampling.py needs more than we stub
        print(f"k-diffusion: {path} could not be loaded ({type(err).__name__}: {err}); no k-diffusion rows")
        return None
    print(f"k-diffusion: sampling module loaded from {path}")
    return mod


class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.name = "wall (CUDA-synchronised)" if self.cuda else "thread CPU time (time.thread_time)"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.thread_time()


def measure(setting: str, engines: list[str], rows, reps: int, device: torch.device, kd, writer, label: str,
            own: bool = False) -> list[dict]:
    make_net, shape, steps = SETTINGS[setting]
    torch.manual_seed(0)
    net = make_net().to(device).eval()
    sde = VPSDE()
    B = shape[0]
    clock = Clock(device)
    x = torch.randn(shape, device=device)
    c = torch.full((B,), 0.5, device=device)
    if own:  # the sampler alone: a "network" that returns a fixed tensor at no cost
        buf = 0.1 * torch.randn(shape, device=device)
        model = ScoreModel(lambda xx, cc: buf, sde, "eps")
        sampled_net = lambda xx, cc: buf
    else:
        model = ScoreModel(net, sde, "eps")
        sampled_net = net

    def bare_call() -> float:
        n = 0
        t0 = clock()
        while True:
            net(x, c)
            n += 1
            el = clock() - t0
            if n >= 3 and el > 0.05:
                return el / n

    with torch.no_grad():
        for _ in range(3):
            net(x, c)
        b = bare_call()
        if own:  # the sampler runs are short: one bare figure for the setting (best of 5) serves them all
            b = min(bare_call() for _ in range(5))
            bare_call = lambda: b  # noqa: E731
        print(f"\n== {setting}: net {type(net).__name__}, x {tuple(shape)}, {steps} steps, bare call {b * 1e3:.3f} ms "
              f"[{clock.name}] ==", flush=True)
        out = []
        for name, opts, row in rows:
            spec = get(name)
            st = SPECIAL[name][1](steps) if name in SPECIAL else steps
            ts = make_grid(sde, st, spec.default_schedule, device=device)
            for eng in engines:
                if eng.endswith("+cnoise") and not spec.traits(opts).stochastic:
                    continue  # draws no noise: the same run as without +cnoise
                if not eng.startswith("eager") and spec.coefficients is None:
                    continue
                if not eng.startswith("eager"):
                    try:
                        spec.table(sde, ts, **opts)
                    except ValueError:
                        continue  # no table for these options (pc with the Langevin corrector)
                rec = _time_one(model, sde, spec, ts, opts, eng, B, x, clock, bare_call, reps, own)
                if rec is None:
                    continue
                rec.update(setting=setting, sampler=row, label=label, steps=st)
                out.append(rec)
                writer(rec)
                print(f"  {row:20s} {eng:9s} NFE {rec['nfe']:5d}  wall {rec['wall_ms']:9.2f} ms  bare {rec['bare_ms']:.3f} ms"
                      f"  overhead {rec['overhead']:.3f}  {rec['samples_per_s']:.0f} samples/s", flush=True)
        if kd is not None:
            for kname in KD_SAMPLERS:
                rec = _time_kd(kd, kname, sampled_net, B, x, steps, clock, bare_call, reps, device, own)
                rec.update(setting=setting, sampler=f"k-diffusion {kname}", label=label, steps=steps)
                out.append(rec)
                writer(rec)
                print(f"  {kname:20s} {'kd':9s} NFE {rec['nfe']:5d}  wall {rec['wall_ms']:9.2f} ms  "
                      f"overhead {rec['overhead']:.3f}", flush=True)
    return out


def _time_one(model, sde, spec, ts, opts, eng, B, x, clock, bare_call, reps, own=False):
    eng, _, nk = eng.partition("+")
    kernel = "compiled" if nk == "cnoise" else "torch"

    def once():
        noise = PerSampleNoise(torch.arange(B, device=x.device), kernel=kernel)
        x_T = noise(x)
        model.reset_nfe()
        t0 = clock()
        if eng == "eager":
            spec.fn(model, sde, x_T, ts, noise=noise, callback=lambda i, xx: xx, **opts)
        else:
            from scoresde.engine import run

            run(eng, model, sde, x_T, ts, spec.table(sde, ts, **opts), noise)
        return clock() - t0, model.nfe

    try:
        once()  # warm-up (and compilation)
    except Exception as err:
        print(f"  {spec.name} {eng}: skipped ({type(err).__name__}: {err})")
        return None
    return _collect(once, bare_call, reps, B, eng + ("+cnoise" if nk else ""), own)


def _time_kd(kd, kname, net, B, x, steps, clock, bare_call, reps, device, own=False):
    sigmas = kd.get_sigmas_karras(steps, 0.002, 80.0, device=device)
    calls = [0]

    def denoiser(xx, sigma):
        calls[0] += 1
        return xx - kd.utils.append_dims(sigma, xx.ndim) * net(xx, sigma)

    def once():
        calls[0] = 0
        x_T = torch.randn_like(x) * 80.0
        t0 = clock()
        getattr(kd, kname)(denoiser, x_T, sigmas, disable=True)
        return clock() - t0, calls[0]

    once()
    return _collect(once, bare_call, reps, B, "kd", own)


def _collect(once, bare_call, reps, B, eng, own=False) -> dict:
    ratios, walls, bares = [], [], []
    for _ in range(reps):
        b0 = bare_call()
        w, nfe = once()
        b1 = bare_call()
        b = 0.5 * (b0 + b1)
        ratios.append(w / (nfe * b))
        walls.append(w)
        bares.append(b)
    # Other processes on shared cores only ever add time: the best of the runs on each side is the
    # estimate least disturbed by them (the median of the bracketed ratios is kept beside it).
    wall = min(walls)
    if own:  # wall is the sampler's own time: overhead = 1 + own / (NFE x bare)
        return {"engine": eng, "nfe": nfe, "wall_ms": wall * 1e3, "bare_ms": min(bares) * 1e3,
                "overhead": 1.0 + wall / (nfe * min(bares)), "overhead_median": 1.0 + statistics.median(ratios),
                "overhead_min": 1.0 + min(ratios), "overhead_max": 1.0 + max(ratios),
                "samples_per_s": B / (wall + nfe * min(bares)), "reps": reps}
    return {"engine": eng, "nfe": nfe, "wall_ms": wall * 1e3, "bare_ms": min(bares) * 1e3,
            "overhead": wall / (nfe * min(bares)), "overhead_median": statistics.median(ratios),
            "overhead_min": min(ratios), "overhead_max": max(ratios), "samples_per_s": B / wall, "reps": reps}


def markdown(records: list[dict], engines: list[str], header: str) -> str:
    lines = [header, ""]
    for setting in dict.fromkeys(r["setting"] for r in records):
        recs = [r for r in records if r["setting"] == setting]
        make_net, shape, steps = SETTINGS[setting]
        bare = statistics.median(r["bare_ms"] for r in recs)
        lines.append(f"### {setting}: x {tuple(shape)}, {steps} steps, bare network call {bare:.3f} ms\n")
        lines.append("Overhead = best sampler time / (NFE x best bare call) over the runs (the median of "
                     "bracketed per-run ratios is in the CSV). Samples/s of the best engine.\n")
        cols = [e for e in engines if any(r["engine"] == e for r in recs)]
        lines.append("| sampler | NFE | " + " | ".join(cols) + " | best | samples/s (best) |")
        lines.append("|---|---|" + "---|" * len(cols) + "---|---|")
        for sampler in dict.fromkeys(r["sampler"] for r in recs if r["engine"] != "kd"):
            rs = {r["engine"]: r for r in recs if r["sampler"] == sampler}
            best = min(rs.values(), key=lambda r: r["overhead"])
            cells = [f"{rs[e]['overhead']:.2f}" if e in rs else "-" for e in cols]
            nfe = next(iter(rs.values()))["nfe"]
            lines.append(f"| {sampler} | {nfe} | " + " | ".join(cells) + f" | {best['engine']} {best['overhead']:.2f} | "
                         f"{best['samples_per_s']:.0f} |")
        kd = [r for r in recs if r["engine"] == "kd"]
        if kd:
            lines.append("")
            lines.append("| k-diffusion sampler | NFE | overhead | samples/s |")
            lines.append("|---|---|---|---|")
            for r in kd:
                lines.append(f"| {r['sampler'].split()[-1]} | {r['nfe']} | {r['overhead']:.2f} | {r['samples_per_s']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def report(paths: list[str]) -> str:
    """One table per setting from CSVs of several labels: eager per label, then the engines of the
    last label that has them, the best engine, and the k-diffusion rows."""
    rows = []
    for path in paths:
        with open(path) as fh:
            rows += list(csv.DictReader(fh))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == setting]
        engines = [e for e in ("torch", "compiled", "fused", "graph") if any(r["engine"] == e for r in rs)]
        bare = {lab: statistics.median(float(r["bare_ms"]) for r in rs if r["label"] == lab) for lab in labels
                if any(r["label"] == lab for r in rs)}
        out.append(f"### {setting}: x {SETTINGS[setting][1]}, {SETTINGS[setting][2]} steps; bare network call "
                   + ", ".join(f"{v:.3f} ms ({k})" for k, v in bare.items()) + "\n")
        cols = [f"eager ({lab})" for lab in bare] + engines
        out.append("| sampler | NFE | " + " | ".join(cols) + " | best after | samples/s (best) |")
        out.append("|---|---|" + "---|" * len(cols) + "---|---|")
        for sampler in dict.fromkeys(r["sampler"] for r in rs if r["engine"] != "kd"):
            cell = {(r["label"], r["engine"]): r for r in rs if r["sampler"] == sampler}
            vals = [cell.get((lab, "eager")) for lab in bare]
            vals += [next((cell[(lab, e)] for lab in reversed(labels) if (lab, e) in cell), None) for e in engines]
            after = [v for v, c in zip(vals, cols, strict=True) if v is not None and c != f"eager ({labels[0]})"]
            best = min(after, key=lambda r: float(r["overhead"])) if after else None
            nfe = next(v for v in vals if v is not None)["nfe"]
            txt = [f"{float(v['overhead']):.2f}" if v is not None else "-" for v in vals]
            b = f"{best['engine']} {float(best['overhead']):.2f} | {float(best['samples_per_s']):.0f}" if best else "- | -"
            out.append(f"| {sampler} | {nfe} | " + " | ".join(txt) + f" | {b} |")
        kd = [r for r in rs if r["engine"] == "kd"]
        if kd:
            out.append("\nk-diffusion, same run: " + ", ".join(
                f"{r['sampler'].split()[-1].replace('sample_', '')} {float(r['overhead']):.2f}" for r in kd) + ".")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", nargs="+", metavar="CSV", help="only print the combined table of these result files")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated: {', '.join(SETTINGS)}")
    ap.add_argument("--samplers", default="", help="comma-separated sampler (row) names; default: every fixed-step sampler")
    ap.add_argument("--engines", default="", help="comma-separated; default: eager + every engine available here")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--label", default="after", help="names the output files (e.g. before / after)")
    ap.add_argument("--out", default=os.path.join("runs", "overhead"))
    ap.add_argument("--no-kd", action="store_true", help="skip the k-diffusion rows")
    ap.add_argument("--cnoise", action="store_true",
                    help="also run each engine with PerSampleNoise(kernel='compiled') (engine label ENGINE+cnoise; "
                         "stochastic samplers only): the Philox rounds as one torch.compile-d kernel")
    ap.add_argument("--own", action="store_true",
                    help="time the samplers with a network that costs nothing (a fixed output tensor): the "
                         "sampler's own time; overhead = 1 + own / (NFE x bare call), immune to the noise of "
                         "long runs on shared cores")
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.report))
        return
    torch.set_num_threads(1)
    device = torch.device(args.device)
    try:
        from scoresde.engine import available

        here = ["eager"] + available(device)
    except ImportError:  # a checkout without scoresde.engine (the "before" baseline)
        here = ["eager"]
    engines = [e for e in args.engines.split(",") if e] or here
    engines = [e for e in engines if e in here]
    if args.cnoise:
        engines += [e + "+cnoise" for e in engines]
    rows = fixed_step_samplers()
    if args.samplers:
        keep = set(args.samplers.split(","))
        rows = [r for r in rows if r[2] in keep or r[0] in keep]
    kd = None if args.no_kd else load_kdiffusion()
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, f"overhead_{args.label}.csv")
    fields = ["label", "setting", "sampler", "engine", "steps", "nfe", "bare_ms", "wall_ms", "overhead", "overhead_median",
              "overhead_min", "overhead_max", "samples_per_s", "reps"]
    records = []
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()

        def writer(rec):
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in rec.items() if k in fields})
            fh.flush()

        for setting in args.settings.split(","):
            records += measure(setting, engines, rows, args.reps, device, kd, writer, args.label, args.own)
    command = "python benchmarks/overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"<!-- made by: {command} -->\nscoresde {scoresde.__version__} ({os.path.dirname(scoresde.__file__)}), "
              f"torch {torch.__version__}, device {device.type} ({dev_name}), torch threads {torch.get_num_threads()}, "
              f"clock: {Clock(device).name}, {args.reps} runs per cell, {time.strftime('%Y-%m-%d')}.")
    md_path = os.path.join(args.out, f"overhead_{args.label}.md")
    with open(md_path, "w") as fh:
        fh.write(markdown(records, engines + ["kd"], header))
    print(f"\nwrote {csv_path} and {md_path}")
    if not math.isfinite(sum(r["overhead"] for r in records)):
        sys.exit("non-finite timing")


if __name__ == "__main__":
    main()
