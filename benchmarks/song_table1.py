"""Song et al. 2021, Table 1, in spirit: predictors with and without Langevin correctors, VE vs VP.

The paper compares, on CIFAR-10 FID, three predictors (reverse diffusion, ancestral sampling,
probability flow) run as P1000 (1000 predictor steps), P2000 (2000 predictor steps), C2000
(2000 corrector steps, no predictor) and PC1000 (1000 predictor steps each followed by one
Langevin corrector step: 2000 score evaluations, the cost of P2000 and C2000), for the VE (SMLD)
and VP (DDPM) SDEs. Here the data are exact Gaussian mixtures (the score is exact, so only the
samplers differ) and, when a trained digits checkpoint is given, the 8x8 digits (Frechet digits
distance). Quality is each metric divided by its noise floor (1 = as good as exact samples).

Mapping to our samplers:

* reverse diffusion: ``reverse_diffusion`` (P), ``pc(predictor=reverse_diffusion)`` (PC);
* ancestral: ``ancestral`` (P), ``pc(predictor=ancestral)`` (PC);
* probability flow: ``ode(method=euler)`` (P: Euler on the probability-flow ODE, one score
  evaluation per step). ``pc`` has no probability-flow predictor, so **PC1000 is not run for
  probability flow** (the paper's PC row there uses one);
* C2000: ``pc(predictor=none)``; the corrector alone, the same for every row.

The corrector is Langevin with ``snr=0.16`` and ``n_corrector_steps=1`` (score_sde's default
config for both SDEs) and ``norm=batch`` (score_sde's batch-mean norms, which the paper used);
``pc(norm=per_sample)`` (our default) is run as an extra row.

    python benchmarks/song_table1.py                          # the mixtures (about 50 min on one CPU core)
    python benchmarks/song_table1.py --digits runs/digits     # adds a trained digits checkpoint
    python benchmarks/song_table1.py --docs                   # also copy tables/plots to docs/
    python benchmarks/song_table1.py --budget 50              # the same table at N = 50 (P50, P100, C100, PC50)

Resumable: run the same command again after an interruption and only missing cells run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import torch

from scoresde._utils import atomic_write_text
from scoresde.bench import Entry, ResultStore, Sweep, aggregate, run_sweep

PC = {"corrector": "langevin", "snr": 0.16, "n_corrector_steps": 1, "norm": "batch"}


def entries(budget: int = 1000) -> list[Entry]:
    """The paper's rows at budget N (its N = 1000): P N, P 2N, C 2N and PC N."""
    n1, n2 = budget, 2 * budget
    return [
        Entry("reverse_diffusion", label="reverse diffusion P", steps=(n1, n2), series="reverse diffusion"),
        Entry("pc", {"predictor": "reverse_diffusion", **PC}, label="reverse diffusion PC", steps=(n1,),
              series="reverse diffusion PC"),
        Entry("pc", {"predictor": "reverse_diffusion", **PC, "norm": "per_sample"},
              label="reverse diffusion PC (per-sample norm)", steps=(n1,), series="reverse diffusion PC (per-sample)"),
        Entry("ancestral", label="ancestral P", steps=(n1, n2), series="ancestral"),
        Entry("pc", {"predictor": "ancestral", **PC}, label="ancestral PC", steps=(n1,), series="ancestral PC"),
        Entry("pc", {"predictor": "ancestral", **PC, "norm": "per_sample"},
              label="ancestral PC (per-sample norm)", steps=(n1,), series="ancestral PC (per-sample)"),
        Entry("ode", {"method": "euler"}, label="probability flow P", steps=(n1, n2), series="probability flow"),
        Entry("pc", {"predictor": "none", **PC}, label="corrector only C", steps=(n2,), series="corrector only"),
    ]


def cells(budget: int) -> dict[tuple[str, int], tuple[str, str]]:
    """(label, steps) -> (row, column) of the paper's table at budget N."""
    n1, n2 = budget, 2 * budget
    out = {("corrector only C", n2): ("(any)", f"C{n2}")}
    for row in ("reverse diffusion", "ancestral", "probability flow"):
        out[(f"{row} P", n1)] = (row, f"P{n1}")
        out[(f"{row} P", n2)] = (row, f"P{n2}")
    for row in ("reverse diffusion", "ancestral"):
        out[(f"{row} PC", n1)] = (row, f"PC{n1}")
        out[(f"{row} PC (per-sample norm)", n1)] = (f"{row}, per-sample norm", f"PC{n1}")
    return out


ROWS = ("reverse diffusion", "ancestral", "probability flow", "(any)", "reverse diffusion, per-sample norm",
        "ancestral, per-sample norm")


def table(records: list[dict], problem: str, metric: str, budget: int = 1000) -> str:
    """The paper's layout: rows = predictor, columns = P N / P 2N / C 2N / PC N;
    each cell = metric / floor, mean +- std over seeds (NFE)."""
    where = cells(budget)
    cols = (f"P{budget}", f"P{2 * budget}", f"C{2 * budget}", f"PC{budget}")
    cell = {}
    for r in aggregate(records):
        if r["problem"] != problem or (r["label"], r["steps"]) not in where:
            continue
        if r["errors"] == r["seeds"]:
            txt = "diverged"
        elif f"{metric}_ratio" in r:
            sd = r.get(f"{metric}_std", 0.0) / r[f"{metric}_floor"] if r[f"{metric}_floor"] else 0.0
            spread = f" ± {sd:.2f}" if r["seeds"] > 1 else ""  # no spread from a single seed
            txt = f"{r[f'{metric}_ratio']:.2f}{spread} ({int(r['nfe'])})"
        else:
            continue
        cell[where[(r["label"], r["steps"])]] = txt
    lines = ["| predictor | " + " | ".join(cols) + " |", "|---" + "|---:" * len(cols) + "|"]
    for row in ROWS:
        if any((row, c) in cell for c in cols):
            lines.append(f"| {row} | " + " | ".join(cell.get((row, c), "n/a" if row == "probability flow" and c == cols[3]
                                                            else "") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: str, records: list[dict], problems: list[str], command: str, budget: int = 1000) -> str:
    md = [f"<!-- made by: {command} -->",
          "Each cell: metric / noise floor, mean ± std over seeds (std also divided by the floor; no std for "
          "one seed), and (NFE). "
          "1.0 = as close to the reference as another exact (or held-out) set of the same size.\n"]
    for p in problems:
        recs = [r for r in records if r["problem"] == p and r.get("status") == "ok"]
        if not recs:
            continue
        n, seeds = recs[0]["n"], sorted({r["seed"] for r in recs})
        metrics = ["fd", "sw2"] if "fd" in recs[0] else ["sw2", "mmd", "mode_err"]
        for m in metrics:
            if m not in recs[0]:
                continue
            floor = recs[0][f"{m}_floor"]
            md.append(f"### {p}: {m} / floor (n = {n}, seeds {', '.join(map(str, seeds))}; floor {floor:.4g})\n")
            md.append(table(records, p, m, budget))
    path = os.path.join(out, "song_table1.md")
    atomic_write_text(path, "\n".join(md))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="results folder (default results/song_table1, or "
                    "results/song_table1_N<budget> for another --budget)")
    ap.add_argument("--budget", type=int, default=1000, help="N: the paper's P N, P 2N, C 2N, PC N (its N = 1000)")
    ap.add_argument("--problems", default="gmm2d-ve,gmm2d-vp,gmm16d-ve,gmm16d-vp")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("-n", type=int, default=2000, help="samples per cell on the mixtures")
    ap.add_argument("--digits", default=None, help="a trained digits checkpoint or run folder (adds ckpt:PATH)")
    ap.add_argument("--digits-n", type=int, default=500, help="samples per cell on the digits (<= 898)")
    ap.add_argument("--digits-seeds", default="0")
    ap.add_argument("--docs", action="store_true", help="copy the table to docs/data and the plots to docs/figures")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.budget < 1:
        raise ValueError(f"--budget must be >= 1; got {args.budget}")
    if args.out is None:
        args.out = "results/song_table1" if args.budget == 1000 else f"results/song_table1_N{args.budget}"
    problems = args.problems.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    run_sweep(Sweep(entries(args.budget), problems=problems, seeds=seeds, n=args.n), args.out, progress=True)
    if args.digits:
        dig = f"ckpt:{args.digits}"
        problems.append(dig)
        run_sweep(Sweep(entries(args.budget), problems=[dig], seeds=[int(s) for s in args.digits_seeds.split(",")],
                        n=args.digits_n, metrics=["fd", "sw2"]), args.out, progress=True)
    records = ResultStore(args.out).records()
    command = "python benchmarks/song_table1.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_report(args.out, records, problems, command.strip(), args.budget)
    print(open(path).read())
    if args.docs:
        os.makedirs("docs/data", exist_ok=True)
        os.makedirs("docs/figures", exist_ok=True)
        tag = "" if args.budget == 1000 else f"_N{args.budget}"
        shutil.copy(path, f"docs/data/song_table1{tag}.md")
        for p in problems:
            for m in ("sw2", "fd"):
                src = os.path.join(args.out, "plots", f"{p.replace(':', '_').replace('/', '_')}_{m}.png")
                if os.path.exists(src):
                    name = "digits" if p.startswith("ckpt:") else p
                    shutil.copy(src, f"docs/figures/bench_song_table1{tag}_{name}_{m}.png")
        print(f"copied the table to docs/data/song_table1{tag}.md and the plots to docs/figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
