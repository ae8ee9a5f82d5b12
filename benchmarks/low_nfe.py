"""Samplers and time grids at 5-20 network evaluations, on exact Gaussian mixtures (issue 12).

For each mixture (``gmm2d``, ``gmm16d``, ``gmm64d`` of scoresde.bench.problems, VP SDE by default),
each NFE budget (5, 10, 15, 20; the final Tweedie step counts as one) and each sampler, on its
default grid, the other standard grid, the Align-Your-Steps (SD 1.5) shape, and (deterministic
samplers) a grid from :func:`scoresde.grids.optimize_schedule`:

* **pathwise error** at t_min: per sample ||x - x_ref|| / sqrt(d), where x_ref is the exact-score
  probability-flow solution from the same x_T (float64 dopri5, rtol = atol = 1e-10; the sampler
  runs in float64 too); median and rms over the samples. For stochastic samplers it measures how
  far their path strays from the deterministic one, not an error;
* **Delta logp**: mean exact log p0 of the samples (after the final step) minus that of exact
  samples. The exact samples are the probability-flow images at sigma~ = 0 of the same x_T
  (exact samples of p0, paired with the sampler's), so the noise floor is the standard error of
  the paired mean (given as +- below; 0 +- floor is a perfect sampler);
* **SW2 / floor**: sliced W2 to an independent exact set, divided by the mean SW2 between exact sets.

The optimised grids are fitted on other x_T (``optimize_schedule`` seed 0, 256 samples) than the
``--n`` evaluation samples (seed 12345): the tables show how the grids generalise. ``--final-study``
adds the final-step table (Tweedie vs one probability-flow step vs none, several t_min, NFE 1000).

torch runs on one thread (``torch.set_num_threads(1)``), float64.

    python benchmarks/low_nfe.py --docs                 # everything, writes docs/data + docs/figures (~1 h, 1 core)
    python benchmarks/low_nfe.py --quick                # gmm2d, NFE 10, n 500 (about a minute)

Resumable: cells are appended to OUT/cells.jsonl as they finish and skipped on a rerun; the
optimised grids are kept in OUT/grids/*.json (scoresde.grids.load_schedule reads them).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time

import torch

from scoresde import EDMSDE, VESDE, VPSDE, SubVPSDE
from scoresde.bench.problems import mixture
from scoresde.grids import load_schedule, optimize_schedule, pathwise_error, published_grid, steps_for_nfe, teacher_trajectory
from scoresde.metrics import sliced_wasserstein
from scoresde.samplers import get, sample
from scoresde.samplers.final import final_step
from scoresde.schedules import make_grid

F64 = torch.float64
NFES = (5, 10, 15, 20)
# (label, sampler, options)
DETERMINISTIC = [
    ("ddim", "ddim", {}), ("dpmpp_2m", "dpmpp_2m", {}), ("dpmpp_3m", "dpmpp_3m", {}), ("unipc", "unipc", {}),
    ("unipc(order=3)", "unipc", {"order": 3}), ("unipc(bh1)", "unipc", {"variant": "bh1"}), ("heun", "heun", {}),
    ("ipndm", "ipndm", {}), ("ipndm(order=3)", "ipndm", {"order": 3}), ("lms", "lms", {}), ("deis", "deis", {}),
]
STOCHASTIC = [
    ("euler_maruyama", "euler_maruyama", {}), ("reverse_diffusion", "reverse_diffusion", {}),
    ("ancestral", "ancestral", {}), ("euler_ancestral", "euler_ancestral", {}), ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
    ("ddim(eta=1)", "ddim", {"eta": 1.0}),
    ("edm_sde(churn)", "edm_sde", {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}),
    ("restart", "restart", {}), ("restart(K=1)", "restart", {"K": 1}),
    ("pc(norm=batch)", "pc", {"norm": "batch"}),
]
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDMSDE}


# ------------------------------------------------------------------------------------ the reference
def reference(gm, sde, x_T: torch.Tensor, tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at t_min, x~ at sigma~ = 0) of the exact probability-flow solution from x_T.

    In x~ = x / alpha and sigma~ the PF-ODE does not depend on the SDE, so any SDE's solution is
    solved on a VP SDE with t_min = 0, which reaches sigma~ = 0, from the same sigma~(T) and x~_T.
    """
    vp = VPSDE(t_min=0.0)
    s_T, s_min = (sde.sigma_tilde(torch.tensor(t, dtype=F64)) for t in (sde.T, sde.t_min))
    if float(s_T) > float(vp.sigma_tilde(torch.tensor(vp.T, dtype=F64))):
        raise ValueError(f"sigma~(T) = {float(s_T):.4g} is above the VP SDE's range")
    t0, t1 = vp.t_from_sigma_tilde(s_T), vp.t_from_sigma_tilde(s_min)
    ts = torch.stack([t0, t1, torch.zeros((), dtype=F64)])
    x0 = x_T.to(F64) / sde.alpha(torch.tensor(sde.T, dtype=F64)) * vp.alpha(t0)
    out, _ = teacher_trajectory(gm.model(vp), vp, x0, ts, rtol=tol, atol=tol)
    x_tmin = out[1] / vp.alpha(t1) * sde.alpha(torch.tensor(sde.t_min, dtype=F64))
    return x_tmin, out[2]


class Problem:
    """One mixture + SDE: evaluation x_T, its reference, exact sets and floors (computed once)."""

    def __init__(self, name: str, sde_name: str, n: int, cache: str):
        self.name, self.sde_name = name, sde_name
        self.gm, self.sde = mixture(name), SDES[sde_name]()
        self.model = self.gm.model(self.sde)
        g = torch.Generator().manual_seed(12345)
        self.x_T = torch.randn(n, self.gm.dim, generator=g, dtype=F64) * self.sde.prior_std()
        path = os.path.join(cache, f"reference_{name}_{sde_name}_{n}.pt")
        if os.path.exists(path):
            self.ref_tmin, self.ref_0 = torch.load(path)
        else:
            self.ref_tmin, self.ref_0 = reference(self.gm, self.sde, self.x_T)
            os.makedirs(cache, exist_ok=True)
            torch.save((self.ref_tmin, self.ref_0), path)
        self.logp_ref = self.gm.log_prob(self.ref_0)
        self.exact = [self.gm.sample(n, generator=torch.Generator().manual_seed(s), dtype=F64) for s in range(1, 6)]
        self.sw_floor = sum(sliced_wasserstein(self.exact[0], e) for e in self.exact[1:]) / 4

    @property
    def key(self) -> str:
        return f"{self.name}-{self.sde_name}"


def evaluate(p: Problem, sampler: str, options: dict, ts, final: str = "tweedie") -> dict:
    """Run on the evaluation x_T; the metrics of one cell."""
    t0 = time.perf_counter()
    r = sample(p.model, p.sde, tuple(p.x_T.shape), sampler, schedule=ts, x_T=p.x_T, denoise=False, dtype=F64,
               seeds=range(p.x_T.shape[0]), **options)
    err = pathwise_error(r.x, p.ref_tmin)
    x = final_step(p.model, r.x, r.ts[-1], final)
    nfe = r.nfe + (final != "none")
    d = p.gm.log_prob(x) - p.logp_ref
    return {"nfe": nfe, "steps": len(r.ts) - 1, "path_median": float(err.median()), "path_rms": float(err.pow(2).mean().sqrt()),
            "dlogp": float(d.mean()), "dlogp_se": float(d.std() / math.sqrt(len(d))),
            "sw2_ratio": sliced_wasserstein(x, p.exact[0]) / p.sw_floor, "wall_s": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------ the sweep
STOCHASTIC_LABELS = {label for label, _, _ in STOCHASTIC}


def grids_for(p: Problem, label: str, sampler: str, options: dict, nfe: int, out: str, fit_n: int) -> dict:
    """{grid name: (times, info)} for one sampler and budget (optimised: deterministic samplers only)."""
    spec = get(sampler)
    steps = steps_for_nfe(p.model, p.sde, sampler, nfe, shape=(p.gm.dim,), options=options)
    other = "logsnr" if spec.default_schedule != "logsnr" else "karras"
    grids = {f"default ({spec.default_schedule})": (make_grid(p.sde, steps, spec.default_schedule), {}),
             other: (make_grid(p.sde, steps, other), {}),
             "ays_sd15": (published_grid("ays_sd15", p.sde, steps).ts, {})}
    if label not in STOCHASTIC_LABELS:
        path = os.path.join(out, "grids", f"{p.key}_{label}_nfe{nfe}.json")
        if os.path.exists(path):
            g = load_schedule(path, p.sde)
        else:
            g = optimize_schedule(p.model, p.sde, sampler, nfe, options=options, shape=(p.gm.dim,), n_samples=fit_n)
            g.save(path, sde=p.sde)
        if g.steps == steps:
            grids["optimised"] = (g.ts, g.info)
    return grids


def run(args) -> list[dict]:
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    cells_path = os.path.join(args.out, "cells.jsonl")
    done = {}
    if os.path.exists(cells_path):
        for line in open(cells_path):
            if line.strip():
                rec = json.loads(line)
                done[(rec["problem"], rec["label"], rec["nfe_budget"], rec["grid"])] = rec
    samplers = DETERMINISTIC + STOCHASTIC
    if args.samplers:
        keep = set(args.samplers.split(","))
        samplers = [s for s in samplers if s[0] in keep]
    records = list(done.values())
    for name in args.mixtures.split(","):
        p = Problem(name, args.sde, args.n, os.path.join(args.out, "cache"))
        print(f"{p.key}: n={args.n}, SW2 floor {p.sw_floor:.4g}", flush=True)
        for nfe in args.nfe:
            for label, sampler, options in samplers:
                try:
                    grids = grids_for(p, label, sampler, options, nfe, args.out, args.fit_n)
                except ValueError as err:
                    print(f"  {label} NFE {nfe}: skipped ({err})")
                    continue
                for gname, (ts, info) in grids.items():
                    key = (p.key, label, nfe, gname)
                    if key in done:
                        continue
                    rec = {"problem": p.key, "dim": p.gm.dim, "label": label, "sampler": sampler, "options": options,
                           "stochastic": label in STOCHASTIC_LABELS, "nfe_budget": nfe, "grid": gname, "n": args.n,
                           "sw2_floor": p.sw_floor, **evaluate(p, sampler, options, ts)}
                    if info:
                        rec["fit"] = {k: info.get(k) for k in ("fit_error", "validation_error", "cost")}
                    records.append(rec)
                    done[key] = rec
                    with open(cells_path, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                print(f"  {label:18s} NFE {nfe:2d}: " + ", ".join(
                    f"{g} {done[(p.key, label, nfe, g)]['path_median']:.3g}" for g in grids), flush=True)
    return records


# ------------------------------------------------------------------------------------ tables
def _best(records, problem, nfe, stochastic, exclude_optimised=False):
    rs = [r for r in records if r["problem"] == problem and r["nfe_budget"] == nfe and r["stochastic"] == stochastic
          and not (exclude_optimised and r["grid"] == "optimised")]
    return min(rs, key=lambda r: r["path_median"]) if rs else None


def tables(records: list[dict], command: str) -> str:
    out = [f"<!-- made by: {command} -->", ""]
    problems = sorted({r["problem"] for r in records}, key=lambda s: (len(s), s))
    nfes = sorted({r["nfe_budget"] for r in records})
    # Targets.
    out += ["### Targets: best deterministic sampler and grid vs `unipc` on its default grid (pathwise median)", "",
            "| problem | NFE | unipc default | best (sampler, grid) | best | ratio | target (<= 1/3) |",
            "|---|---:|---:|---|---:|---:|---|"]
    for p in problems:
        for nfe in nfes:
            base = [r for r in records if r["problem"] == p and r["nfe_budget"] == nfe and r["label"] == "unipc"
                    and r["grid"].startswith("default")]
            best = _best(records, p, nfe, False)
            if not base or not best:
                continue
            ratio = best["path_median"] / base[0]["path_median"]
            ok = "met" if ratio <= 1 / 3 else f"missed by {ratio * 3:.2f}x"
            out.append(f"| {p} | {nfe} | {base[0]['path_median']:.4f} | {best['label']}, {best['grid']} | "
                       f"{best['path_median']:.4f} | {ratio:.2f} | {ok if nfe in (10, 20) else '-'} |")
    out += ["", "NFE 5 target (some sampler below 0.1 pathwise median on every mixture): " + ", ".join(
        f"{p}: {b['label']} ({b['grid']}) {b['path_median']:.3f}" for p in problems
        if (b := _best(records, p, min(nfes), False))), ""]
    for p in problems:
        for stochastic in (False, True):
            rs = [r for r in records if r["problem"] == p and r["stochastic"] == stochastic]
            if not rs:
                continue
            n = rs[0]["n"]
            kind = "stochastic" if stochastic else "deterministic"
            out += [f"### {p}, {kind} samplers (n = {n}; SW2 floor {rs[0]['sw2_floor']:.4f})", "",
                    "Each cell: pathwise median / rms, Delta logp (+- its floor), SW2/floor; NFE in the header "
                    "(the actual NFE if lower in brackets).", ""]
            labels = list(dict.fromkeys(r["label"] for r in rs))
            grids = list(dict.fromkeys(r["grid"].split(" (")[0] for r in rs))
            out.append("| sampler | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
            out.append("|---|---|" + "---:|" * len(nfes))
            for lab in labels:
                for gr in grids:
                    cells = []
                    for nfe in nfes:
                        c = [r for r in rs if r["label"] == lab and r["nfe_budget"] == nfe and r["grid"].split(" (")[0] == gr]
                        if not c:
                            cells.append("")
                            continue
                        c = c[0]
                        extra = f" [{c['nfe']}]" if c["nfe"] != nfe else ""
                        cells.append(f"{c['path_median']:.3g} / {c['path_rms']:.3g}, {c['dlogp']:+.3f} (+-{c['dlogp_se']:.3f}), "
                                     f"{c['sw2_ratio']:.2f}{extra}")
                    if any(cells):
                        gname = next(r["grid"] for r in rs if r["label"] == lab and r["grid"].split(" (")[0] == gr)
                        out.append(f"| {lab} | {gname} | " + " | ".join(cells) + " |")
            out.append("")
    # Optimiser cost and generalisation.
    fits = [r for r in records if r["grid"] == "optimised" and r.get("fit")]
    if fits:
        out += ["### Optimised grids: fit vs held-out samples and cost", "",
                "Mean pathwise error (the objective) of the default grid and the optimised grid on the 256 fitted x_T, "
                "on 256 held-out x_T (optimize_schedule's validation), and the median on this benchmark's n evaluation x_T; "
                "cost in batch network calls, sample evaluations and seconds (1 CPU thread).", "",
                "| problem | sampler | NFE | fit default -> DP -> opt | held-out default -> opt | eval median default -> opt | "
                "calls | sample evals | s |", "|---|---|---:|---|---|---|---:|---:|---:|"]
        for r in fits:
            f, v, c = r["fit"]["fit_error"], r["fit"]["validation_error"], r["fit"]["cost"]
            d = [x for x in records if x["problem"] == r["problem"] and x["label"] == r["label"] and
                 x["nfe_budget"] == r["nfe_budget"] and x["grid"].startswith("default")]
            dm = f"{d[0]['path_median']:.4f} -> " if d else ""
            fit = f"{f['default']:.4f} -> {f['dp']:.4f} -> {f['final']:.4f}"
            out.append(f"| {r['problem']} | {r['label']} | {r['nfe_budget']} | {fit} | "
                       f"{v['default']['mean']:.4f} -> {v['final']['mean']:.4f} | {dm}{r['path_median']:.4f} | "
                       f"{c['network_batch_calls']} | {c['sample_evaluations']} | {c['wall_s']:.1f} |")
        out.append("")
    return "\n".join(out)


def write_csv(records, path):
    cols = ["problem", "dim", "label", "sampler", "stochastic", "nfe_budget", "nfe", "steps", "grid", "n", "path_median",
            "path_rms", "dlogp", "dlogp_se", "sw2_ratio", "sw2_floor", "wall_s"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({r["problem"] for r in records}, key=lambda s: (len(s), s))
    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4), squeeze=False)
    for ax, p in zip(axes[0], problems, strict=True):
        rs = [r for r in records if r["problem"] == p and not r["stochastic"]]
        shown = ("unipc", "dpmpp_2m", "heun", "ipndm", "ipndm(order=3)", "lms", "deis")
        for color, lab in enumerate(shown):
            for gr, style in (("default", "--"), ("optimised", "-")):
                pts = sorted((r["nfe"], r["path_median"]) for r in rs if r["label"] == lab and r["grid"].startswith(gr))
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, color=f"C{color}", marker="o", ms=3, label=f"{lab} {gr}")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("pathwise median ||x - x_ref|| / sqrt(d)")
        ax.set_title(p)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle("dashed: the sampler's default grid; solid: optimize_schedule's grid (fitted on other x_T)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------------------------ final-step study
def final_study(args) -> str:
    """Delta logp of the final step on the 64-D mixture at NFE 1000 (dpmpp_2m) for several end times."""
    torch.set_num_threads(1)
    cases = [("vp", VPSDE()), ("vp", VPSDE(t_min=1e-4)), ("vp", VPSDE(t_min=1e-5)), ("subvp", SubVPSDE()),
             ("ve", VESDE(sigma_min=0.002)), ("ve", VESDE()), ("edm", EDMSDE())]
    rows = ["| SDE | t_min | sigma~(t_min) | steps | final step | NFE | Delta logp (+- floor) | pathwise median at t_min |",
            "|---|---:|---:|---:|---|---:|---:|---:|"]
    gm = mixture(args.final_mixture)
    n = args.n
    g = torch.Generator().manual_seed(12345)
    z = torch.randn(n, gm.dim, generator=g, dtype=F64)
    for _, sde in cases:
        x_T = z * sde.prior_std()
        ref_tmin, ref_0 = reference(gm, sde, x_T)
        lref = gm.log_prob(ref_0)
        model = gm.model(sde)
        s_min = float(sde.sigma_tilde(torch.tensor(sde.t_min, dtype=F64)))
        for sampler, steps in (("dpmpp_2m", 999), ("lms", 19)):
            r = sample(model, sde, tuple(x_T.shape), sampler, steps, x_T=x_T, denoise=False, dtype=F64)
            med = float(pathwise_error(r.x, ref_tmin).median())
            for rule in ("tweedie", "ode", "none"):
                x = final_step(model, r.x, r.ts[-1], rule)
                d = gm.log_prob(x) - lref
                rows.append(f"| {sde!r} | {sde.t_min:g} | {s_min:.4g} | {sampler} {steps} | {rule} | "
                            f"{r.nfe + (rule != 'none')} | {float(d.mean()):+.4f} (+-{float(d.std() / math.sqrt(n)):.4f}) | "
                            f"{med:.2e} |")
        print(rows[-1], flush=True)
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/low_nfe")
    ap.add_argument("--mixtures", default="gmm2d,gmm16d,gmm64d")
    ap.add_argument("--sde", default="vp", choices=sorted(SDES))
    ap.add_argument("--nfe", default=",".join(map(str, NFES)))
    ap.add_argument("--samplers", default=None, help="comma-separated labels (default: all)")
    ap.add_argument("-n", "--n", type=int, default=2000, help="evaluation samples")
    ap.add_argument("--fit-n", type=int, default=256, help="samples the optimised grids are fitted on")
    ap.add_argument("--quick", action="store_true", help="gmm2d, NFE 10, n 500")
    ap.add_argument("--final-study", action="store_true", help="also the final-step table")
    ap.add_argument("--final-mixture", default="gmm64d")
    ap.add_argument("--docs", action="store_true", help="copy tables to docs/data and the plot to docs/figures")
    args = ap.parse_args(argv)
    if args.quick:
        args.mixtures, args.nfe, args.n = "gmm2d", "10", 500
        if args.out == "results/low_nfe":
            args.out = "results/low_nfe_quick"
    args.nfe = [int(v) for v in str(args.nfe).split(",")]
    command = "python benchmarks/low_nfe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    records = run(args)
    md = tables(records, command.strip())
    if args.final_study:
        md += "\n### Final step: Tweedie vs one probability-flow step (Delta logp on " + args.final_mixture + ")\n\n"
        md += final_study(args)
    with open(os.path.join(args.out, "low_nfe.md"), "w") as fh:
        fh.write(md)
    write_csv(records, os.path.join(args.out, "low_nfe.csv"))
    plot(records, os.path.join(args.out, "low_nfe_pathwise.png"))
    print(md)
    if args.docs:
        os.makedirs("docs/data", exist_ok=True)
        os.makedirs("docs/figures", exist_ok=True)
        shutil.copy(os.path.join(args.out, "low_nfe.md"), "docs/data/low_nfe.md")
        shutil.copy(os.path.join(args.out, "low_nfe.csv"), "docs/data/low_nfe.csv")
        shutil.copy(os.path.join(args.out, "low_nfe_pathwise.png"), "docs/figures/low_nfe_pathwise.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
