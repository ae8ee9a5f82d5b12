"""``scoresde bench``: compare samplers over step budgets, problems and seeds (resumable).

Writes ``results.jsonl`` and ``results.csv`` as cells finish, then ``table.md`` and
``plots/*.png`` under ``--out``. Running the same command again runs only the missing cells.
Under ``torchrun --nproc_per_node K scoresde bench ...`` the cells are split over K processes.
``--peers`` adds the installed peers' samplers (k-diffusion's ``kdiff:NAME``, diffusers'
``diffusers:SCHEDULER``) on the same problems, seeds and NFE counting; a peer that is not installed
is a row that says so. ``--problems py:MODULE:FUNCTION`` benchmarks your own model (the function
returns a ``scoresde.bench.Problem``).
"""

from __future__ import annotations

from . import check_output_dir, int_arg

HELP = "benchmark samplers: quality (with noise floors), NFE, wall time and memory over a sweep; resumable"
DESCRIPTION = __doc__

# The --quick sweep: these samplers where registered, on the 2-D mixture (23 cells, about 20 s on 2 CPU cores).
QUICK_SAMPLERS = ("euler_maruyama", "reverse_diffusion", "pc", "ode", "heun", "ddim", "dpmpp_2m", "unipc", "adaptive_sde")
QUICK = {"steps": "10,30,100", "problems": "gmm2d-vp", "seeds": "0", "n": 1000, "floor_repeats": 5, "out": "results/bench-quick"}
DEFAULTS = {"steps": "10,20,50,100", "problems": "gmm2d-vp", "seeds": "0", "n": 2000, "floor_repeats": 5, "out": "results/bench"}


def add_arguments(p) -> None:
    p.add_argument("--samplers", default=None,
                   help="comma-separated registry names with optional options, e.g. "
                        "'euler_maruyama,pc(corrector=langevin,snr=0.16),ddim' (default: every registered sampler)")
    p.add_argument("--steps", default=None, help=f"comma-separated step budgets (default {DEFAULTS['steps']}; "
                   "adaptive samplers run once per seed)")
    p.add_argument("--peers", nargs="?", const="default", default=None, metavar="LIST",
                   help="also run the peers' samplers: alone, the default set (scoresde.bench.peers.DEFAULT_PEERS; "
                        "with --quick QUICK_PEERS: kdiff:heun,dpmpp_2m,euler_ancestral,lms and diffusers' DDIM, "
                        "DPMSolverMultistep, UniPCMultistep, EulerDiscrete); or a "
                        "comma-separated list such as 'kdiff:heun,diffusers:DDIM(timestep_spacing=trailing)'. Peer names "
                        "may also go in --samplers. A peer that is not installed is a row that says so")
    p.add_argument("--problems", default=None,
                   help=f"comma-separated problems: gmm2d|gmm16d|gmm64d with -vp|-subvp|-ve|-edm, ckpt:PATH, or "
                        f"py:MODULE:FUNCTION (your function returning a scoresde.bench.Problem; it runs your code, never "
                        f"code from a checkpoint) (default {DEFAULTS['problems']})")
    p.add_argument("--seeds", default=None, help=f"comma-separated sweep seeds (default {DEFAULTS['seeds']})")
    p.add_argument("--n", "-n", type=int, default=None, help=f"samples per cell (default {DEFAULTS['n']})")
    p.add_argument("--batch", type=int, default=0, help="samples per sample() call (0 = all n at once)")
    p.add_argument("--out", default=None, help=f"results folder (default {DEFAULTS['out']}; --quick: {QUICK['out']})")
    p.add_argument("--quick", action="store_true",
                   help=f"a small sweep (steps {QUICK['steps']}, {QUICK['problems']}, n {QUICK['n']}, samplers "
                        f"{','.join(QUICK_SAMPLERS)} where registered); explicit flags still override")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="sample dtype")
    p.add_argument("--metrics", default=None, help="comma-separated subset of sw2,mmd,energy,kid,frechet,mode_err,"
                   "logp_gap,fd,kd (default: all the problem offers)")
    p.add_argument("--floor-repeats", type=int, default=None, help="exact-vs-exact repeats per noise floor "
                   f"(default {DEFAULTS['floor_repeats']})")
    p.add_argument("--no-warmup", action="store_true", help="time without the warm-up run")
    p.add_argument("--min-time", type=float, default=0.5,
                   help="repeat each timed run until this many seconds (at most --max-timed-runs runs; median reported)")
    p.add_argument("--max-timed-runs", type=int, default=5, help="at most this many timed runs per cell")
    p.add_argument("--retry-errors", action="store_true", help="run again the cells recorded as diverged")
    p.add_argument("--max-cells", type=int, default=None, help="stop after this many new cells")
    p.add_argument("--threads", type=int_arg(0), default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--report-only", action="store_true", help="only rewrite table.md and the plots from the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _sweep(args):
    from scoresde.bench import Entry, Sweep, parse_entries, parse_int_list
    from scoresde.bench.peers import DEFAULT_PEERS, QUICK_PEERS, is_peer
    from scoresde.samplers import available

    base = QUICK if args.quick else DEFAULTS
    for flag, value in (("--samplers", args.samplers), ("--steps", args.steps), ("--problems", args.problems),
                        ("--seeds", args.seeds), ("--metrics", args.metrics)):
        if value is not None and not value.strip(" ,"):  # an empty list is an error, not the default
            raise ValueError(f"{flag} is empty; give at least one item, or leave the flag out for the default")
    if args.samplers:
        entries = parse_entries(args.samplers)
    elif args.quick:
        entries = [Entry(s) for s in QUICK_SAMPLERS if s in available()]
    else:
        entries = [Entry(s) for s in available()]
    if args.peers is not None:
        if args.peers == "default":
            peer_entries = [Entry(s) for s in (QUICK_PEERS if args.quick else DEFAULT_PEERS)]
        else:
            peer_entries = parse_entries(args.peers)
        bad = [e.sampler for e in peer_entries if not is_peer(e.sampler)]
        if bad:
            raise ValueError(f"--peers: {bad[0]!r} is not a peer sampler; accepted: kdiff:NAME (k-diffusion's sample_NAME) "
                             "or diffusers:SCHEDULER (e.g. diffusers:DDIM)")
        entries += [e for e in peer_entries if e not in entries]
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    n = args.n if args.n is not None else base["n"]
    return Sweep(
        entries=entries,
        steps=parse_int_list(args.steps or base["steps"], "--steps"),
        problems=[p.strip() for p in (args.problems or base["problems"]).split(",") if p.strip()],
        seeds=parse_int_list(args.seeds or base["seeds"], "--seeds"),
        n=n,
        batch=args.batch,
        device=device,
        dtype=args.dtype,
        metrics=[m.strip() for m in args.metrics.split(",")] if args.metrics else None,
        floor_repeats=args.floor_repeats if args.floor_repeats is not None else base["floor_repeats"],
        warmup=not args.no_warmup,
        min_time=args.min_time,
        max_timed_runs=args.max_timed_runs,
    )


def run(args) -> int:
    import os

    import torch

    from scoresde.bench import ResultStore, run_sweep, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    out = check_output_dir(args.out or (QUICK if args.quick else DEFAULTS)["out"])
    if args.report_only:
        if not os.path.exists(os.path.join(out, "results.jsonl")):
            raise FileNotFoundError(f"--report-only: no results.jsonl under --out {out!r}")
        write_report(out, ResultStore(out).records())
        return 0
    sweep = _sweep(args)
    if args.max_cells is not None and args.max_cells < 0:
        raise ValueError(f"--max-cells must be >= 0; got {args.max_cells}")
    summary = run_sweep(sweep, out, progress=not args.no_progress, retry_errors=args.retry_errors,
                        max_cells=args.max_cells)
    if summary["rank"] == 0:
        print(f"{summary['ran']} new cell(s) run, {summary['skipped_done']} already done, of {summary['cells']} "
              f"(results in {out}/results.csv)")
        table = os.path.join(out, "table.md")
        if os.path.exists(table):
            print()
            print(open(table).read())
    return 0
