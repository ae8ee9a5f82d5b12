"""Guided and conditional sampling on exact class-conditional mixtures: samplers vs guidance weight.

Two tasks, both with closed-form scores (so every error is the sampler's or the guidance
method's, never a network's):

* ``cfg``: classifier-free guidance ``(1 + w) score(x | y) - w score(x)`` on a class-conditional
  mixture (``cc2d``: gmm2d, classes {0, 1}, {2, 3}, {4}, class 0; ``cc16d``: gmm16d, classes of
  two modes, class 1), VP SDE, w in 0, 1, 3, 7, every sampler at several step counts. Per cell:
  - ``path_rms``: deterministic samplers, the RMS over samples of |x - x_ref| with x_ref a tight
    dopri5 solve (rtol = atol = 1e-10) of the *same guided PF-ODE* from the same x_T (the sampler's
    own error, 0 at convergence);
  - ``sw2_ratio``: SW2 to exact samples of the conditional p(x | y), over the noise floor of two
    exact sets (guidance bias + sampler error: at w > 0 no sampler reaches 1);
  - ``sw2_ref_ratio``: SW2 to the sampler family's converged guided distribution (deterministic:
    the tight ODE solve; stochastic: Euler-Maruyama with 2000 steps on the guided reverse SDE),
    over the same floor (the sampler's distributional error);
  - ``dlogp``: mean log p(x | y) of the samples minus that of exact conditional samples (> 0:
    sharper than the conditional, what guidance is for; < 0: mass off the modes);
  and, per sampler and w, the NFE it needs to reach ``path_rms < 1e-2`` / ``sw2_ref_ratio < 1.6``
  (where a sampler breaks down as w grows).
* ``inpaint``: gmm16d (VP), observe coordinates 0-7 (at values between two components' means,
  chosen for the most even posterior: three modes), sample coordinates 8-15. The exact answer is
  the conditional mixture ``GaussianMixture.condition``. Methods: the exact posterior score
  (``condition_linear`` with no noise) with several samplers, Song et al.'s replacement
  (``scoresde.guidance.inpainting``), DPS as a score correction (``scoresde.guidance.DPS``) with
  noise_std 0.05 (compared with the noiseless conditional) and 0.3 (compared with the exact
  posterior of that noisy observation), and DPS with Chung et al.'s normalised step
  (``step="chung"``, zeta 0.1). Per cell: SW2 / floor on the unobserved coordinates and dlogp under the
  exact target.

Writes docs/data/guidance_{cfg,inpaint}.{md,csv} and docs/figures/guidance_*.png (or --out).
One torch thread (stated in the tables); n = 2000 samples per cell, one seed.

    python benchmarks/guidance.py            # the full run (about 25 min on 2 shared CPU cores)
    python benchmarks/guidance.py --quick    # a smoke run (~1 min), written to results/guidance_quick
"""

from __future__ import annotations

import argparse
import csv
import inspect
import io
import math
import os
import sys
import time

import torch

from scoresde import VPSDE, sample
from scoresde import guidance as G
from scoresde._utils import atomic_write_text
from scoresde.bench.measure import environment
from scoresde.bench.problems import mixture
from scoresde.exact import ClassConditionalMixture
from scoresde.metrics import sliced_wasserstein
from scoresde.random import PerSampleNoise, make_seeds
from scoresde.schedules import make_grid

F64 = torch.float64
DETERMINISTIC = ("ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")
STOCHASTIC = ("euler_maruyama", "euler_ancestral", "dpmpp_2m_sde")
WEIGHTS = (0.0, 1.0, 3.0, 7.0)
PATH_TOL, SW_TOL = 1e-2, 1.6


def problems() -> dict[str, tuple[ClassConditionalMixture, int]]:
    return {
        "cc2d": (ClassConditionalMixture(mixture("gmm2d"), [0, 0, 1, 1, 2]), 0),
        "cc16d": (ClassConditionalMixture(mixture("gmm16d"), [0, 0, 1, 1, 2, 2]), 1),
    }


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


FLOORS: dict[str, tuple[float, float]] = {}  # target name -> (mean, std) of the floor, for the tables


def floor_of(dist, n: int, repeats: int = 10, name: str | None = None) -> tuple[float, torch.Tensor]:
    """Mean SW2 between an exact reference set and `repeats` other exact sets; and the reference.

    The spread (std over the repeats) is kept in FLOORS[name]: a single exact set of n samples is
    itself up to ~2 x the mean floor away from the reference in 2-D (e.g. the x_T set that all
    deterministic samplers share: see the reference:ode rows).
    """
    ref = dist.sample(n, generator=_gen(1_000_003), dtype=F64)
    vals = torch.tensor([sliced_wasserstein(ref, dist.sample(n, generator=_gen(2_000_003 + r), dtype=F64))
                         for r in range(repeats)], dtype=F64)
    if name is not None:
        FLOORS[name] = (float(vals.mean()), float(vals.std()))
    return float(vals.mean()), ref


def _front_door_has_guidance() -> bool:
    return "guidance" in inspect.signature(sample).parameters


def sample_guided(model, sde, shape, sampler, steps, guidance, seed):
    """``sample(..., guidance=G)`` when the front door has it; else one sample() call per interval
    (single-step samplers only), projecting in between, with one shared per-sample noise stream."""
    if _front_door_has_guidance():
        return sample(model, sde, shape, sampler, steps, guidance=guidance, dtype=F64, generator=_gen(seed)).x
    m = guidance.wrap(model, sde)
    ts = make_grid(sde, steps, "uniform")
    noise = PerSampleNoise(make_seeds(shape[0], generator=_gen(seed)))
    x = guidance.project(noise(torch.empty(shape, dtype=F64)) * sde.prior_std(), ts[0], -1)
    for i in range(steps):
        x = sample(m, sde, shape, sampler, schedule=ts[i : i + 2], x_T=x, denoise=False, noise=noise, dtype=F64).x
        x = guidance.project(x, ts[i + 1], i)
    return guidance.finish(m(x, ts[-1]).x0)


# ---------------------------------------------------------------------------------- cfg task
def run_cfg(n: int, steps_list: list[int], weights, names: list[str], seed: int, log) -> list[dict]:
    sde = VPSDE()
    rows = []
    for pname in names:
        ccm, cls = problems()[pname]
        sub = ccm.conditional(cls)
        floor, ref = floor_of(sub, n, name=pname)
        lp_ref = float(sub.log_prob(ref).mean())
        D = ccm.dim
        y = torch.full((n,), cls, dtype=torch.long)
        x_T = torch.randn(n, D, generator=_gen(10 + seed), dtype=F64)  # the same x_T for every deterministic run
        for w in weights:
            model = G.ClassifierFreeGuidance(w).wrap(ccm.model(sde), sde)
            t0 = time.perf_counter()
            ode_ref = sample(model, sde, (n, D), "ode", rtol=1e-10, atol=1e-10, x_T=x_T, cond={"y": y}, dtype=F64)
            sde_ref = sample(model, sde, (n, D), "euler_maruyama", 2000, cond={"y": y}, dtype=F64,
                             generator=_gen(1000 + seed)).x
            log(f"{pname} w={w:g}: references (dopri5 {ode_ref.nfe} NFE, EM 2000 steps) in {time.perf_counter() - t0:.1f}s")
            refs = {"ode": ode_ref.x, "sde": sde_ref}
            for name, x_ref in refs.items():
                rows.append(dict(problem=pname, w=w, sampler=f"reference:{name}", steps=None,
                                 nfe=ode_ref.nfe if name == "ode" else 2 * 2001,
                                 path_rms=None, **_quality(x_ref, ref, None, sub, floor, lp_ref)))
            for sampler in DETERMINISTIC + STOCHASTIC:
                det = sampler in DETERMINISTIC
                for steps in steps_list:
                    kw = dict(x_T=x_T) if det else dict(generator=_gen(seed))
                    try:
                        res = sample(model, sde, (n, D), sampler, steps, cond={"y": y}, dtype=F64, **kw)
                        x, nfe, err = res.x, res.nfe, ""
                    except Exception as e:  # a sampler that blows up is a result, recorded as such
                        x, nfe, err = None, None, f"{type(e).__name__}: {str(e)[:80]}"
                    row = dict(problem=pname, w=w, sampler=sampler, steps=steps, nfe=nfe)
                    if x is None or not bool(torch.isfinite(x).all()):
                        row.update(path_rms=math.inf, sw2=math.inf, sw2_ratio=math.inf, sw2_ref_ratio=math.inf,
                                   dlogp=-math.inf, error=err or "non-finite samples")
                    else:
                        row["path_rms"] = float((x - refs["ode"]).norm(dim=1).pow(2).mean().sqrt()) if det else None
                        row.update(_quality(x, ref, refs["ode" if det else "sde"], sub, floor, lp_ref))
                    rows.append(row)
                log(f"  {pname} w={w:g} {sampler}: done")
    return rows


def _quality(x, ref, fam_ref, sub, floor, lp_ref) -> dict:
    sw = sliced_wasserstein(x, ref)
    out = dict(sw2=sw, sw2_floor=floor, sw2_ratio=sw / floor, dlogp=float(sub.log_prob(x).mean()) - lp_ref, error="")
    out["sw2_ref_ratio"] = None if fam_ref is None else sliced_wasserstein(x, fam_ref) / floor
    return out


# ---------------------------------------------------------------------------------- inpainting task
def ambiguous_observation(gm, obs):
    """Observed values between two components' means with the most even posterior (max weight entropy)."""
    best = None
    for a in range(gm.n_components):
        for b in range(a + 1, gm.n_components):
            for lam in torch.linspace(0.1, 0.9, 17, dtype=F64):
                xo = lam * gm.means[a, obs] + (1 - lam) * gm.means[b, obs]
                w = gm.condition(obs, xo).weights
                h = float(-(w * torch.log(w.clamp_min(1e-300))).sum())
                if best is None or h > best[0]:
                    best = (h, xo)
    return best[1]


def run_inpaint(n: int, steps_list: list[int], seed: int, log) -> tuple[list[dict], dict]:
    sde = VPSDE()
    gm = mixture("gmm16d")
    obs = torch.arange(16) < 8
    truth = torch.zeros(16, dtype=F64)
    truth[obs] = ambiguous_observation(gm, obs)
    sel = torch.eye(16, dtype=F64)[obs]
    targets, floors, lps = {}, {}, {}
    for key, s in (("noiseless", 0.0), ("noisy 0.3", 0.3)):
        targets[key] = gm.condition_linear(sel, truth[obs], s)
        marg = targets[key].marginal(~obs)
        floors[key], ref = floor_of(marg, n, name=f"inpaint {key}")
        lps[key] = (marg, ref, float(marg.log_prob(ref).mean()))
    exact = gm.condition(obs, truth)
    info = {"observed": truth[obs].tolist(), "weights": exact.weights.tolist(), "floors": floors}
    log(f"inpaint: exact conditional weights {[round(float(v), 3) for v in exact.weights]}, floors {floors}")
    methods = [("exact posterior", s, "noiseless") for s in ("euler_maruyama", "ddim", "dpmpp_2m", "heun")]
    methods += [("replacement", s, "noiseless") for s in ("euler_maruyama", "reverse_diffusion", "ddim")]
    methods += [("dps s=0.05", s, "noiseless") for s in ("euler_maruyama", "ddim")]
    methods += [("dps s=0.3", s, "noisy 0.3") for s in ("euler_maruyama", "ddim")]
    methods += [("exact posterior s=0.3", "euler_maruyama", "noisy 0.3")]
    methods += [("dps chung zeta=0.1", s, "noiseless") for s in ("euler_maruyama", "ddim")]
    rows = []
    for method, sampler, target in methods:
        marg, ref, lp_ref = lps[target]
        for steps in steps_list:
            t0 = time.perf_counter()
            try:
                if method.startswith("exact posterior"):
                    res = sample(targets[target].model(sde), sde, (n, 16), sampler, steps, dtype=F64, generator=_gen(seed))
                    x, nfe = res.x, res.nfe
                elif method == "replacement":
                    x = sample_guided(gm.model(sde), sde, (n, 16), sampler, steps, G.inpainting(obs, truth, seed=seed), seed)
                    nfe = steps + 1
                elif method.startswith("dps chung"):
                    g = G.DPS(G.Mask(obs), truth, step="chung", zeta=float(method.split("=")[1]))
                    x = sample_guided(gm.model(sde), sde, (n, 16), sampler, steps, g, seed)
                    nfe = steps + 1
                else:
                    m = G.DPS(G.Mask(obs), truth, float(method.split("=")[1])).wrap(gm.model(sde), sde)
                    res = sample(m, sde, (n, 16), sampler, steps, dtype=F64, generator=_gen(seed))
                    x, nfe = res.x, res.nfe
                err = ""
            except Exception as e:
                x, nfe, err = None, None, f"{type(e).__name__}: {str(e)[:80]}"
            row = dict(method=method, sampler=sampler, target=target, steps=steps, nfe=nfe, error=err)
            if x is None or not bool(torch.isfinite(x).all()):
                row.update(sw2=math.inf, sw2_ratio=math.inf, dlogp=-math.inf, obs_err=math.inf,
                           error=err or "non-finite samples")
            else:
                xu = x[:, ~obs]
                sw = sliced_wasserstein(xu, ref)
                row.update(sw2=sw, sw2_ratio=sw / floors[target], dlogp=float(marg.log_prob(xu).mean()) - lp_ref,
                           obs_err=float((x[:, obs] - truth[obs]).abs().median()))
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
        log(f"  inpaint {method} / {sampler}: done")
    return rows, info


# ---------------------------------------------------------------------------------- tables and plots
def _f(v, fmt=".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "diverged"
    return format(v, fmt)


def cfg_tables(rows: list[dict], steps_list: list[int], header: str) -> str:
    md = [header]
    for pname in dict.fromkeys(r["problem"] for r in rows):
        pr = [r for r in rows if r["problem"] == pname]
        md.append(f"\n## {pname}\n")
        if pname in FLOORS:
            m, sd = FLOORS[pname]
            md.append(f"SW2 noise floor of p(x | y): mean {m:.4f}, std {sd:.4f} "
                      "over 10 pairs of exact sets (ratios below divide by the mean).\n")
        for metric, title in (("path_rms", "pathwise RMS error vs a tight solve of the same guided ODE (NFE)"),
                              ("sw2_ratio", "SW2 / floor against exact samples of p(x | y)"),
                              ("sw2_ref_ratio", "SW2 / floor against the converged guided distribution of the "
                                                "sampler's family (ODE: dopri5 1e-10; SDE: EM 2000 steps)"),
                              ("dlogp", "mean log p(x | y) of the samples minus that of exact samples")):
            md.append(f"\n### {pname}: {title}\n")
            md.append("| sampler | w | " + " | ".join(f"{s} steps" for s in steps_list) + " |")
            md.append("|---|---|" + "---|" * len(steps_list))
            for sampler in DETERMINISTIC + STOCHASTIC:
                if metric == "path_rms" and sampler in STOCHASTIC:
                    continue
                for w in dict.fromkeys(r["w"] for r in pr):
                    cells = []
                    for s in steps_list:
                        r = next((r for r in pr if r["sampler"] == sampler and r["w"] == w and r["steps"] == s), None)
                        v = None if r is None else r.get(metric)
                        cells.append(_f(v) + ("" if r is None or r["nfe"] is None or metric != "path_rms"
                                              else f" ({r['nfe']})"))
                    md.append(f"| {sampler} | {w:g} | " + " | ".join(cells) + " |")
            if metric in ("sw2_ratio", "dlogp"):
                for w in dict.fromkeys(r["w"] for r in pr):
                    refs = [r for r in pr if r["w"] == w and r["sampler"].startswith("reference")]
                    md.append("| " + ", ".join(f"{r['sampler']} ({r['nfe']} NFE)" for r in refs) + f" | {w:g} | "
                              + " / ".join(_f(r[metric]) for r in refs) + " |" + " |" * (len(steps_list) - 1))
        md.append(f"\n### {pname}: NFE needed (smallest budget that reaches it; '>' = none of the budgets)\n")
        md.append("| sampler | criterion | " + " | ".join(f"w={w:g}" for w in dict.fromkeys(r["w"] for r in pr)) + " |")
        md.append("|---|---|" + "---|" * len(dict.fromkeys(r["w"] for r in pr)))
        for sampler in DETERMINISTIC + STOCHASTIC:
            for metric, tol in (("path_rms", PATH_TOL), ("sw2_ref_ratio", SW_TOL)):
                if metric == "path_rms" and sampler in STOCHASTIC:
                    continue
                cells = []
                for w in dict.fromkeys(r["w"] for r in pr):
                    ok = [r for r in pr if r["sampler"] == sampler and r["w"] == w and r.get(metric) is not None
                          and r[metric] < tol]
                    most = max((r["nfe"] or 0) for r in pr if r["sampler"] == sampler and r["w"] == w)
                    cells.append(str(min(r["nfe"] for r in ok)) if ok else f"> {most}")
                md.append(f"| {sampler} | {metric} < {tol:g} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def inpaint_table(rows: list[dict], steps_list: list[int], header: str, info: dict) -> str:
    fl = info["floors"]
    md = [header, "\ngmm16d, coordinates 0-7 observed at values between two components' means (chosen for the most "
                  "even posterior); the exact conditional of coordinates 8-15 has component weights "
                  f"{', '.join(f'{w:.3f}' for w in info['weights'])}. Each row is compared with its target: "
                  f"'noiseless' = p(x_u | x_o) (SW2 floor {fl['noiseless']:.4f}), 'noisy 0.3' = the exact posterior of "
                  f"y = x_o + N(0, 0.3^2) (floor {fl['noisy 0.3']:.4f}), the target of DPS with noise_std 0.3. "
                  "Floor std over 10 pairs: " + ", ".join(f"{k[8:]} {v[1]:.4f}" for k, v in FLOORS.items()
                                                          if k.startswith("inpaint")) + ".\n"]
    for metric, title in (("sw2_ratio", "SW2 / floor of the unobserved coordinates against the exact conditional"),
                          ("dlogp", "mean log p(x_u | x_o) of the samples minus that of exact samples")):
        md.append(f"\n### {title} (NFE)\n")
        md.append("| method | sampler | target | " + " | ".join(f"{s} steps" for s in steps_list) + " |")
        md.append("|---|---|---|" + "---|" * len(steps_list))
        for key in dict.fromkeys((r["method"], r["sampler"]) for r in rows):
            cells = []
            for s in steps_list:
                r = next((r for r in rows if (r["method"], r["sampler"]) == key and r["steps"] == s), None)
                cells.append("-" if r is None else f"{_f(r[metric])} ({r['nfe']})")
            target = next(r["target"] for r in rows if (r["method"], r["sampler"]) == key)
            md.append(f"| {key[0]} | {key[1]} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def write_csv(path: str, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO(newline="")
    wr = csv.DictWriter(buf, cols)
    wr.writeheader()
    for r in rows:
        wr.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def plots(cfg_rows: list[dict], inp_rows: list[dict], fig_dir: str) -> list[str]:
    from scoresde.plots import pyplot, save_figure

    plt = pyplot()

    out = []
    for pname in dict.fromkeys(r["problem"] for r in cfg_rows):
        pr = [r for r in cfg_rows if r["problem"] == pname and not r["sampler"].startswith("reference")]
        ws = list(dict.fromkeys(r["w"] for r in pr))
        fig, axes = plt.subplots(2, len(ws), figsize=(3.6 * len(ws), 6.4), squeeze=False)
        for j, w in enumerate(ws):
            for sampler in DETERMINISTIC + STOCHASTIC:
                rs = [r for r in pr if r["sampler"] == sampler and r["w"] == w and r["nfe"]]
                if sampler in DETERMINISTIC:
                    pts = [(r["nfe"], r["path_rms"]) for r in rs if math.isfinite(r["path_rms"])]
                    if pts:
                        axes[0, j].loglog(*zip(*pts, strict=True), "o-", ms=3, label=sampler)
                pts = [(r["nfe"], r["sw2_ratio"]) for r in rs if math.isfinite(r["sw2_ratio"])]
                if pts:
                    axes[1, j].loglog(*zip(*pts, strict=True), "o-" if sampler in DETERMINISTIC else "s--", ms=3,
                                      label=sampler)
            axes[0, j].axhline(PATH_TOL, color="gray", lw=0.8, ls=":")
            axes[1, j].axhline(1.0, color="gray", lw=0.8, ls=":")
            for r in cfg_rows:
                if r["problem"] == pname and r["w"] == w and r["sampler"].startswith("reference"):
                    kind = r["sampler"].split(":")[1]
                    axes[1, j].axhline(r["sw2_ratio"], color="k", lw=1.0, ls="-" if kind == "ode" else "--",
                                       label=f"converged guided {kind.upper()}")
            axes[0, j].set_title(f"{pname}, w = {w:g}")
            axes[1, j].set_xlabel("NFE (2 per guided evaluation)")
        axes[0, 0].set_ylabel("pathwise RMS vs tight guided ODE")
        axes[1, 0].set_ylabel("SW2 / floor vs exact p(x | y)")
        axes[1, -1].legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(fig_dir, f"guidance_cfg_{pname}.png")
        save_figure(fig, path)
        out.append(path)
    if inp_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in dict.fromkeys((r["method"], r["sampler"]) for r in inp_rows):
            rs = [r for r in inp_rows if (r["method"], r["sampler"]) == key and r["nfe"] and math.isfinite(r["sw2_ratio"])]
            ls = "s--" if key[0] == "replacement" else "^:" if key[0].startswith("dps") else "o-"
            ax.loglog([r["nfe"] for r in rs], [r["sw2_ratio"] for r in rs], ls, ms=3, label=f"{key[0]} / {key[1]}")
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("NFE")
        ax.set_ylabel("SW2 / floor vs exact p(x_u | x_o)")
        ax.set_title("gmm16d inpainting (8 of 16 coordinates observed)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(fig_dir, "guidance_inpaint.png")
        save_figure(fig, path)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="docs/data")
    ap.add_argument("--fig-dir", default="docs/figures")
    ap.add_argument("--tasks", default="cfg,inpaint")
    ap.add_argument("--problems", default="cc2d,cc16d")
    ap.add_argument("--steps", default="5,10,20,50,100,200")
    ap.add_argument("--inpaint-steps", default="20,50,100,200,500")
    ap.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS))
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="n 500, cc2d, steps 10,50, w 0,7; inpaint steps 20,100")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.n, args.problems, args.steps, args.weights, args.inpaint_steps = 500, "cc2d", "10,50", "0,7", "20,100"
        if args.data_dir == "docs/data":
            args.data_dir = args.fig_dir = "results/guidance_quick"
    os.makedirs(args.data_dir, exist_ok=True)
    os.makedirs(args.fig_dir, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",")]
    isteps = [int(s) for s in args.inpaint_steps.split(",")]
    weights = [float(w) for w in args.weights.split(",")]
    tasks = args.tasks.split(",")
    command = "python benchmarks/guidance.py " + " ".join(argv if argv is not None else sys.argv[1:])
    env = environment()
    header = (f"<!-- made by: {command.strip()} -->\n"
              f"n = {args.n} samples per cell, seed {args.seed}, float64, torch {env['torch']}, "
              f"{env['threads']} torch thread, VP SDE, exact scores. NFE counts network evaluations per sample "
              "(2 per classifier-free guided evaluation, the final denoising step included).")

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    cfg_rows: list[dict] = []
    inp_rows: list[dict] = []
    if "cfg" in tasks:
        cfg_rows = run_cfg(args.n, steps, weights, args.problems.split(","), args.seed, log)
        write_csv(os.path.join(args.data_dir, "guidance_cfg.csv"), cfg_rows)
        text = cfg_tables(cfg_rows, steps, header)
        atomic_write_text(os.path.join(args.data_dir, "guidance_cfg.md"), text)
        print(text)
    if "inpaint" in tasks:
        inp_rows, info = run_inpaint(args.n, isteps, args.seed, log)
        write_csv(os.path.join(args.data_dir, "guidance_inpaint.csv"), inp_rows)
        text = inpaint_table(inp_rows, isteps, header, info)
        atomic_write_text(os.path.join(args.data_dir, "guidance_inpaint.md"), text)
        print(text)
    for p in plots(cfg_rows, inp_rows, args.fig_dir):
        print("wrote", p)
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
