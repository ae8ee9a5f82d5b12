"""The benchmark harness: sweeps of samplers x step budgets x problems x seeds.

    from scoresde.bench import Sweep, Entry, run_sweep
    sweep = Sweep([Entry("euler_maruyama"), Entry("pc", {"corrector": "langevin"})],
                  steps=[10, 100], problems=["gmm2d-vp"], seeds=[0, 1], n=2000)
    summary = run_sweep(sweep, "results/mysweep")   # resumable; writes CSV, JSONL, table.md, plots

See docs/benchmarking.md for the metrics, their noise floors, the fairness rules and the CSV schema.
"""

from .cells import Cell, Entry, Sweep, parse_entries, parse_int_list, shard
from .problems import MIXTURES, Problem, get_problem, mixture
from .report import aggregate, markdown_table, pivot_table, plot_problem, write_report
from .store import ResultStore, merge_shards, read_jsonl
from .sweep import per_sample_seeds, run_cell, run_sweep

__all__ = [
    "Sweep", "Entry", "Cell", "run_sweep", "run_cell", "per_sample_seeds", "parse_entries", "parse_int_list", "shard",
    "Problem", "get_problem", "mixture", "MIXTURES", "ResultStore", "read_jsonl", "merge_shards",
    "aggregate", "markdown_table", "pivot_table", "plot_problem", "write_report",
]
