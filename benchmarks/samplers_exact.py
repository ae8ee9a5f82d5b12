"""Every registered sampler on exact Gaussian mixtures: distance to the noise floor vs NFE and time.

The model is the closed-form noised score of the mixture, so the only error is the sampler's.
For each sampler and step budget it records SW2 / floor (1 = as close to the data as another
exact sample set of the same size), the other metrics, the exact NFE and the wall time, through
the benchmark harness (resumable: run it again after an interruption and only missing cells run).

    python benchmarks/samplers_exact.py                       # the full sweep (about an hour on 2 CPU cores)
    python benchmarks/samplers_exact.py --quick               # a 2-minute smoke version
    python benchmarks/samplers_exact.py --docs                # also copy the tables/plots into docs/

Writes OUT/results.{jsonl,csv}, OUT/table.md, OUT/plots/, and OUT/samplers_exact.{md,csv} (the
compact tables: one row per sampler, one column per step budget, "SW2/floor (NFE)").
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sys

import torch

from scoresde._utils import atomic_write_text
from scoresde.bench import Entry, ResultStore, Sweep, aggregate, pivot_table, run_sweep
from scoresde.samplers import available

# Fixed-grid samplers at each step budget (their own default schedule and options).
FIXED = ("euler_maruyama", "reverse_diffusion", "ancestral", "pc", "euler_ancestral", "edm_sde", "dpmpp_2m_sde",
         "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")


def entries(quick: bool) -> list[Entry]:
    out = [Entry(s) for s in FIXED]
    out += [Entry("ode", {"method": "euler"}), Entry("ode", {"method": "rk4"})]
    # Annealed Langevin: steps = noise levels, 100 Langevin steps each (NCSN), so NFE = 100 x levels.
    out.append(Entry("ald", steps=(2, 5) if quick else (2, 5, 10)))
    # Adaptive solvers: a line over tolerances.
    tols = (1e-3,) if quick else (1e-2, 1e-3, 1e-4, 1e-5)
    out += [Entry("ode", {"rtol": t, "atol": t}, label=f"ode(dopri5, tol={t:g})", series="ode(dopri5)") for t in tols]
    out += [Entry("ode_scipy", {"rtol": t, "atol": t}, label=f"ode_scipy(RK45, tol={t:g})", series="ode_scipy(RK45)")
            for t in tols]
    atols = (0.0078,) if quick else (0.05, 0.02, 0.0078, 0.0039)
    out += [Entry("adaptive_sde", {"abstol": a}, label=f"adaptive_sde(abstol={a:g})", series="adaptive_sde")
            for a in atols]
    return [e for e in out if e.sampler in available()]


def write_tables(out: str, records: list[dict], problems: list[str], command: str) -> tuple[str, str]:
    md = [f"<!-- made by: {command} -->",
          "Each cell: SW2 / noise floor (NFE), mean over seeds; 1.0 = as close to the data as another exact "
          "sample set of the same size. Wall time per cell in seconds below each table.\n"]
    for p in problems:
        recs = [r for r in records if r["problem"] == p]
        if not recs:
            continue
        n, seeds = recs[0]["n"], sorted({r["seed"] for r in recs})
        md.append(f"### {p} (n = {n}, seeds {', '.join(map(str, seeds))})\n")
        md.append(pivot_table(records, p, "sw2"))
        md.append(f"Wall time (s, median of timed runs, {recs[0]['device']}, {recs[0].get('threads')} thread(s)):\n")
        md.append(pivot_table(records, p, value="wall_s", show_nfe=False))
    md_path = os.path.join(out, "samplers_exact.md")
    atomic_write_text(md_path, "\n".join(md))
    csv_path = os.path.join(out, "samplers_exact.csv")
    cols = ["problem", "label", "sampler", "steps", "seeds", "nfe", "sw2_ratio", "sw2", "sw2_floor", "mmd_ratio",
            "energy_ratio", "mode_err_ratio", "logp_gap_ratio", "wall_s", "samples_per_s", "overhead", "errors"]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    for r in aggregate(records):
        w.writerow({k: r.get(k) for k in cols})
    atomic_write_text(csv_path, buf.getvalue())
    return md_path, csv_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/samplers_exact")
    ap.add_argument("--problems", default="gmm2d-vp,gmm16d-vp")
    ap.add_argument("--steps", default="10,20,50,100,200,1000")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="n 500, steps 10,50, one seed, gmm2d-vp")
    ap.add_argument("--docs", action="store_true", help="copy the tables to docs/data and the SW2 plots to docs/figures")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.steps, args.seeds, args.problems = 500, "10,50", "0", "gmm2d-vp"
        if args.out == "results/samplers_exact":
            args.out = "results/samplers_exact_quick"
    problems = args.problems.split(",")
    sweep = Sweep(entries(args.quick), steps=[int(s) for s in args.steps.split(",")], problems=problems,
                  seeds=[int(s) for s in args.seeds.split(",")], n=args.n)
    run_sweep(sweep, args.out, progress=True)
    records = ResultStore(args.out).records()
    command = "python benchmarks/samplers_exact.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md, csv_path = write_tables(args.out, records, problems, command.strip())
    print(open(md).read())
    if args.docs:
        os.makedirs("docs/data", exist_ok=True)
        os.makedirs("docs/figures", exist_ok=True)
        shutil.copy(md, "docs/data/samplers_exact.md")
        shutil.copy(csv_path, "docs/data/samplers_exact.csv")
        for p in problems:
            src = os.path.join(args.out, "plots", f"{p}_sw2.png")
            if os.path.exists(src):
                shutil.copy(src, f"docs/figures/bench_samplers_exact_{p}_sw2.png")
        print("copied the tables to docs/data/ and the SW2 plots to docs/figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
