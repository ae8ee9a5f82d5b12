"""Bring your own model: the measured numbers of docs/byo-model.md.

    python benchmarks/byo_crosscheck.py            # prints the tables (about 1 min on one CPU core)
    python benchmarks/byo_crosscheck.py --docs     # also writes docs/data/byo_crosscheck.md

Needs the peers (``pip install -e .[peers]`` and ``pip install --no-deps k-diffusion``, as
scripts/setup.sh does). Every number is a max absolute difference over a batch of 16 samples of
2-D or 3-D Gaussian-mixture data (scale ~2), float64 unless the row says otherwise:

1. scoresde vs k-diffusion samplers (same exact denoiser, grid, x_T, replayed noise);
2. scoresde vs diffusers schedulers (same exact eps network, the scheduler's timesteps, x_T);
3. the DiscreteVPSDE table: reproduction error, diffusers' float32 tables vs float64 betas, and
   how far the continuous VPSDE() is from the DDPM table it is often used for;
4. networks that take integer timesteps only: interpolated vs rounded vs table-point grids;
5. the cost of the table's kinks for the adaptive ODE sampler.

Writes OUT/byo_crosscheck.md (OUT = runs/byo_crosscheck by default).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys

import torch

import scoresde
from scoresde import EDMSDE, VPSDE, DiscreteVPSDE, Gaussian, GaussianMixture
from scoresde.adapters import from_diffusers, from_k_diffusion, grid_from_sigmas, k_diffusion_sampling
from scoresde.random import TensorNoise
from scoresde.schedules import make_grid

F64 = torch.float64
B = 16


def _fmt(v: float) -> str:
    return "inf/NaN" if not math.isfinite(v) else f"{v:.1e}"


def _md(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------------------------ k-diffusion
def k_diffusion_table() -> str:
    K = k_diffusion_sampling()
    gm = GaussianMixture.random(3, 3, seed=4, spread=1.5)
    edm = EDMSDE()
    calls = {"n": 0}

    def D(x, s):
        calls["n"] += 1
        return gm.x0(x, s, edm)

    model = from_k_diffusion(D)
    rows = []
    cases = [
        ("heun", {}, "sample_heun", {}),
        ("dpmpp_2m", {"lower_order_final": False}, "sample_dpmpp_2m", {}),
        ("dpmpp_2m (default lower_order_final=True)", {}, "sample_dpmpp_2m", {}),
        ("ddim", {}, "sample_euler", {}),
        ("euler_ancestral", {}, "sample_euler_ancestral", {}),
        ("dpmpp_2m_sde", {}, "sample_dpmpp_2m_sde", {}),
        ("dpmpp_2m_sde solver_type=taylor", {"solver_type": "taylor"}, "sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    ]
    for label, opts, fn, kopts in cases:
        row = [label, fn + (f" {kopts}" if kopts else "")]
        for steps in (4, 12, 40):
            sig = K.get_sigmas_karras(steps + 1, edm.sigma_min, edm.sigma_max).to(F64)
            x_T = edm.sigma_max * torch.randn(B, 3, generator=torch.Generator().manual_seed(steps), dtype=F64)
            ours = label.split(" ")[0]
            stochastic = ours in ("euler_ancestral", "dpmpp_2m_sde")
            g, draws = torch.Generator().manual_seed(100 + steps), []

            def ns(s, sn, g=g, draws=draws):
                z = torch.randn(B, 3, generator=g, dtype=F64)
                draws.append(z)
                return z

            calls["n"] = 0
            x_kd = getattr(K, fn)(D, x_T.clone(), sig, disable=True, **({"noise_sampler": ns} if stochastic else {}), **kopts)
            nfe_kd, calls["n"] = calls["n"], 0
            ts, denoise = grid_from_sigmas(edm, sig)
            r = scoresde.sample(model, edm, (B, 3), ours, schedule=ts, denoise=denoise, x_T=x_T, dtype=F64,
                                noise=TensorNoise(draws) if stochastic else None, **opts)
            row.append(f"{_fmt(float((r.x - x_kd).abs().max()))} ({r.nfe}/{nfe_kd})")
        rows.append(row)
    return _md(["scoresde", "k-diffusion", "4 steps + jump to 0", "12 steps + jump", "40 steps + jump"], rows)


# ------------------------------------------------------------------------------------ diffusers
def _eps_net(sde, gm):
    def net(x, k):
        t = sde.t_from_timestep(torch.as_tensor(k).to(F64).expand(x.shape[0]))
        return (-gm.score(x.to(F64), t, sde) * sde.sigma(t)[:, None]).to(x.dtype)

    return net


def _loop(sched, net, x):
    calls = 0
    for k in sched.timesteps:
        calls += 1
        x = sched.step(net(sched.scale_model_input(x, k), k), k, x).prev_sample
    return x, calls


def diffusers_table() -> str:
    import diffusers

    gm = GaussianMixture.ring(4, radius=2.0, std=0.3)
    x_T = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    rows = []

    def run(label, make, ours, opts, steps_list, f64_table=False, euler=False, fix=None):
        row = [label]
        for steps in steps_list:
            sched = make()
            if f64_table:
                sched.alphas_cumprod = sched.alphas_cumprod.to(F64)
                sched.final_alpha_cumprod = sched.final_alpha_cumprod.to(F64)
            sched.set_timesteps(steps)
            sde = DiscreteVPSDE(sched.alphas_cumprod)
            net = _eps_net(sde, gm)
            x0 = x_T * sched.init_noise_sigma if euler else x_T
            x_d, nfe_d = _loop(sched, net, x0.clone())
            ks = sched.timesteps
            try:
                ts = sde.t_from_timestep(ks.to(F64)) if euler else sde.grid(ks)
            except ValueError:
                ks = torch.unique(ks).flip(0)
                ts = sde.grid(ks)
            start = x0 * sde.alpha(ts[:1]) if euler else x_T
            r = scoresde.sample(from_diffusers(net, sched), sde, (B, 2), ours, schedule=ts, x_T=start, dtype=F64, **opts)
            note = "" if len(ks) == len(sched.timesteps) else " (ours on the 999 distinct)"
            row.append(f"{_fmt(float((r.x - x_d).abs().max()))} ({r.nfe}/{nfe_d}){note}")
        rows.append(row)

    S = (10, 50)
    D = diffusers
    run("ddim, DDIMScheduler(clip_sample=False) leading, float64 table",
        lambda: D.DDIMScheduler(clip_sample=False), "ddim", {}, S, f64_table=True)
    run("ddim, same, diffusers' float32 table", lambda: D.DDIMScheduler(clip_sample=False), "ddim", {}, S)
    run("ddim, DDIMScheduler() default clip_sample=True", lambda: D.DDIMScheduler(), "ddim", {}, S, f64_table=True)
    run("ddim, DDIMScheduler trailing", lambda: D.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
        "ddim", {}, S, f64_table=True)
    run("ddim, DDIMScheduler trailing, 7 and 12 steps (stride != spacing)",
        lambda: D.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"), "ddim", {}, (7, 12), f64_table=True)
    run("ddim, DDIMScheduler linspace (stride != spacing)",
        lambda: D.DDIMScheduler(clip_sample=False, timestep_spacing="linspace"), "ddim", {}, S, f64_table=True)
    S3 = (5, 10, 20, 50)
    run("dpmpp_2m lower_order_final=False, DPMSolverMultistepScheduler()", lambda: D.DPMSolverMultistepScheduler(),
        "dpmpp_2m", {"lower_order_final": False}, S3)
    run("dpmpp_2m default (lower_order_final=True), same", lambda: D.DPMSolverMultistepScheduler(), "dpmpp_2m", {}, S3)
    run("dpmpp_2m solver_type=taylor, lower_order_final=False, solver_type='heun'",
        lambda: D.DPMSolverMultistepScheduler(solver_type="heun"), "dpmpp_2m",
        {"lower_order_final": False, "solver_type": "taylor"}, S3)
    run("unipc lower_order_final=False, UniPCMultistepScheduler()", lambda: D.UniPCMultistepScheduler(),
        "unipc", {"lower_order_final": False}, S3)
    run("unipc default (lower_order_final=True), same", lambda: D.UniPCMultistepScheduler(), "unipc", {}, S3)
    run("ddim, EulerDiscreteScheduler leading", lambda: D.EulerDiscreteScheduler(timestep_spacing="leading"),
        "ddim", {}, S, euler=True)
    run("ddim, EulerDiscreteScheduler() linspace (fractional timesteps at 50)", lambda: D.EulerDiscreteScheduler(),
        "ddim", {}, S, euler=True)
    table = _md(["scoresde vs diffusers", "10 steps (7 in the stride row)", "50 steps (12 in the stride row)"],
                [r for r in rows if len(r) == 3])
    wide = _md(["scoresde vs diffusers", "5 steps", "10 steps", "20 steps", "50 steps"], [r for r in rows if len(r) == 5])
    # 1000 steps: the repeated timestep
    thousand = []
    for cls, ours in (("DPMSolverMultistepScheduler", "dpmpp_2m"), ("UniPCMultistepScheduler", "unipc")):
        sched = getattr(D, cls)()
        sched.set_timesteps(1000)
        sde = DiscreteVPSDE(sched.alphas_cumprod)
        x_d, _ = _loop(sched, _eps_net(sde, gm), x_T.clone())
        try:
            sde.grid(sched.timesteps)
            refused = "no"
        except ValueError as err:
            refused = str(err).split(";")[1].split("(")[0].strip()
        uk = torch.unique(sched.timesteps).flip(0)
        r = scoresde.sample(from_diffusers(_eps_net(sde, gm), sched), sde, (B, 2), ours, schedule=sde.grid(uk), x_T=x_T,
                            dtype=F64, lower_order_final=False)
        thousand.append([cls, f"{len(torch.unique(sched.timesteps))} of 1000", "finite" if torch.isfinite(x_d).all()
                         else "inf/NaN", f"refused ({refused})", "finite" if torch.isfinite(r.x).all() else "inf/NaN"])
    th = _md(["scheduler at 1000 steps", "distinct timesteps", "diffusers' output", "scoresde on its list",
              "scoresde on the distinct ones"], thousand)
    return table + "\n\n" + wide + "\n\n" + th


# ------------------------------------------------------------------------------------ the table
def table_facts() -> str:
    import diffusers

    rows = []
    for kw in (dict(beta_schedule="linear"), dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
               dict(beta_schedule="squaredcos_cap_v2")):
        sched = diffusers.DDIMScheduler(**kw)
        ac32 = sched.alphas_cumprod.to(F64)
        sde = DiscreteVPSDE(ac32)
        t = sde.t_from_timestep(torch.arange(1000))
        repro = float((sde.alpha(t) ** 2 - ac32).abs().max())
        ours = DiscreteVPSDE(**kw).alphas_cumprod
        rel32 = float(((ours - ac32) / ours).abs().max())
        rows.append([kw["beta_schedule"], _fmt(repro), _fmt(rel32)])
    facts = _md(["schedule (N = 1000)", "max abs(alpha(t_k)^2 - abar_k)", "diffusers float32 vs float64 betas (max rel.)"], rows)
    # The continuous VPSDE() vs the DDPM linear table it approximates.
    table = DiscreteVPSDE(beta_schedule="linear")
    vp = VPSDE(t_min=1e-12)
    k = torch.arange(1000, dtype=F64)
    tk = table.t_from_timestep(k)
    s_tab, st_tab = table.sigma(tk), table.sigma_tilde(tk)
    vrows = []
    for name, t in (("t = k / 999 (this SDE's time)", k / 999), ("t = (k + 1) / 1000", (k + 1) / 1000)):
        cells = [name]
        for mine, ref in ((vp.sigma(t), s_tab), (vp.sigma_tilde(t), st_tab)):
            rel = ((mine - ref) / ref).abs()
            i = int(rel.argmax())
            cells.append(f"{100 * float(rel.max()):.1f}% at k = {i}; {100 * float(rel[10:].max()):.1f}% for k >= 10")
        vrows.append(cells)
    vp_md = _md(["VPSDE() at", "relative sigma difference", "relative sigma~ = sigma/alpha difference"], vrows)
    return facts + "\n\n" + vp_md


# ------------------------------------------------------------------------------------ integer timesteps
def integer_timesteps() -> str:
    """Final-sample error vs the exact PF-ODE map of a Gaussian, three ways of feeding a net that
    is exact at integer timesteps only."""
    sde = DiscreteVPSDE(beta_schedule="linear")
    g = Gaussian(torch.tensor([1.0, -2.0]), torch.tensor([0.25, 2.0]))
    x_T = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=F64)

    def eps_at_timestep(x, k):  # what a table-trained net knows: the exact eps at timestep k
        t = sde.t_from_timestep(k.to(F64))
        return -g.score(x, t, sde) * sde.sigma(t)[:, None]

    rows = []
    for sampler, schedule in (("heun", "karras"), ("dpmpp_2m", "logsnr"), ("ddim", "uniform")):
        for steps in (10, 50, 200):
            grid = make_grid(sde, steps, schedule)
            exact = g.pf_ode_map(x_T, float(grid[0]), float(grid[-1]), sde)
            cells = [sampler, schedule, str(steps)]
            for mode in ("continuous", "round"):
                m = from_diffusers(eps_at_timestep, sde, timesteps=mode)
                r = scoresde.sample(m, sde, (B, 2), sampler, schedule=grid, x_T=x_T, dtype=F64, denoise=False)
                cells.append(_fmt(float((r.x - exact).abs().max())))
            snapped = sde.snap(grid)
            m = from_diffusers(eps_at_timestep, sde, timesteps="exact")
            r = scoresde.sample(m, sde, (B, 2), sampler, schedule=snapped, x_T=x_T, dtype=F64, denoise=False)
            ex_s = g.pf_ode_map(x_T, float(snapped[0]), float(snapped[-1]), sde)
            cells.append(f"{_fmt(float((r.x - ex_s).abs().max()))} ({len(snapped) - 1} steps)")
            rows.append(cells)
    lam = sde._lam
    half = 0.5 * (lam[:-1] - lam[1:])
    note = (f"Rounding moves the level the net sees by up to half a table step in lambda: "
            f"{float(half.max()):.3f} (timesteps 0-1), {float(half[10:].max()):.4f} above timestep 10, "
            f"{float(half[100:].max()):.4f} above 100 (linear betas, N = 1000).")
    return _md(["sampler", "schedule", "steps", "continuous (interpolated t)", "round", "snap to table points (exact)"],
               rows) + "\n\n" + note


# ------------------------------------------------------------------------------------ adaptive ODE
def adaptive_ode() -> str:
    g = Gaussian(torch.tensor([1.0, -2.0]), torch.tensor([0.25, 2.0]))
    x_T = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    rows = []
    for sde in (VPSDE(), DiscreteVPSDE(beta_schedule="linear")):
        for tol in (1e-5, 1e-8):
            r = scoresde.sample(g.score_fn(sde), sde, (B, 2), "ode", x_T=x_T, dtype=F64, denoise=False, rtol=tol, atol=tol)
            err = float((r.x - g.pf_ode_map(x_T, sde.T, sde.t_min, sde)).abs().max())
            rows.append([repr(sde).split("(")[0], f"{tol:g}", str(r.nfe), _fmt(err)])
    return _md(["SDE", "ode rtol = atol", "NFE", "error vs closed form"], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/byo_crosscheck")
    p.add_argument("--docs", action="store_true", help="also write docs/data/byo_crosscheck.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    parts = [
        "## 1. scoresde vs k-diffusion: max |difference| (NFE scoresde/k-diffusion)", k_diffusion_table(),
        "## 2. scoresde vs diffusers: max |difference| (NFE scoresde/diffusers)", diffusers_table(),
        "## 3. The DiscreteVPSDE table", table_facts(),
        "## 4. Nets that take integer timesteps: error vs the closed-form PF-ODE map", integer_timesteps(),
        "## 5. The adaptive ODE sampler and the table's kinks", adaptive_ode(),
    ]
    text = "# byo_crosscheck (benchmarks/byo_crosscheck.py)\n\n" + "\n\n".join(parts) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "byo_crosscheck.md")
    with open(path, "w") as fh:
        fh.write(text)
    if args.docs:
        os.makedirs("docs/data", exist_ok=True)
        shutil.copy(path, "docs/data/byo_crosscheck.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
