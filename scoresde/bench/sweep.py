"""Run a sweep: every cell measured the same way, results stored as they finish, resumable.

Fairness rules (the same for every cell):

* the same model object per problem, wrapped once; NFE is ``SampleResult.nfe`` (counted by the
  model wrapper), never computed from a formula;
* the same per-sample seeds: sample i of sweep seed s uses seed ``s * 2**32 + i`` (Philox key
  (i, s)), so every sampler starts from the same x_T and sample i does not depend on the batch;
* the same reference and floor sets for every sampler of a (problem, n, seed);
* a warm-up run of the same sampler and budget (a small batch on the CPU, the full batch on
  GPUs) before the timed run; the timed run is device-synchronised at both ends.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from typing import Any, Callable

import torch

from .. import distributed
from .._utils import FolderLock, atomic_write_text
from ..distributed import pick_device
from . import peers, quality
from .cells import Cell, Entry, Sweep, shard
from .measure import PeakMemory, TensorPeak, environment, sync, time_network_eval
from .problems import Problem
from .store import ResultStore, merge_shards

__all__ = ["run_sweep", "run_cell", "per_sample_seeds", "is_adaptive"]



def per_sample_seeds(seed: int, n: int) -> torch.Tensor:
    """The per-sample seeds of sweep seed ``seed``: ``seed * 2**32 + i`` for i < n."""
    return torch.arange(n, dtype=torch.int64) + int(seed) * 2**32


@torch.no_grad()
def _sample_all(model, problem: Problem, cell: Cell, n: int, batch: int, seeds, device, dtype):
    """Sample n points in batches (no autograd graph); returns (samples on device, results)."""
    from ..samplers import sample

    steps = None if cell.steps == 0 else cell.steps
    xs, results = [], []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        if peers.is_peer(cell.sampler):  # a peer's sampler, on the same model, seeds and NFE counter
            res = peers.run_peer(cell.sampler, model, problem.sde, (b, *problem.shape), steps,
                                 seeds=seeds[start:start + b], device=device, dtype=dtype, options=cell.options)
        else:
            res = sample(model, problem.sde, (b, *problem.shape), cell.sampler, steps,
                         seeds=seeds[start:start + b], device=device, dtype=dtype, **cell.options)
        xs.append(res.x)
        results.append(res)
    return torch.cat(xs), results


def run_cell(
    cell: Cell,
    problem: Problem,
    model: Any,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    metric_fns: dict[str, Callable],
    floor_repeats: int,
    warmup: bool = True,
    min_time: float = 0.5,
    max_timed_runs: int = 5,
) -> dict[str, Any]:
    """Measure one cell; returns its record (status ``error`` when the sampler diverged).

    The timed run is repeated (same seeds, same samples) until ``min_time`` seconds or
    ``max_timed_runs`` runs; ``wall_s`` is the median, ``wall_min_s`` the fastest. Peak memory
    covers the timed runs; NFE and the samples come from the first."""
    from ..model import NonFiniteError

    n = cell.n
    b = batch or n
    seeds = per_sample_seeds(cell.seed, n)
    rec: dict[str, Any] = {
        "key": cell.key, "problem": cell.problem, "sampler": cell.sampler, "label": cell.label, "series": cell.series,
        "options": json.dumps(cell.options, sort_keys=True), "steps": cell.steps, "seed": cell.seed, "n": n,
        "batch": b, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "time": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        tensor_mb = float("nan")
        if warmup:
            if device.type == "cuda":
                _sample_all(model, problem, cell, b, b, seeds[:b], device, dtype)
            else:  # the CPU warm-up is the memory run: tensor peak, exact but slow per op (not timed)
                with TensorPeak() as tp:
                    _sample_all(model, problem, cell, b, b, seeds[:b], device, dtype)
                tensor_mb = tp.mb
        walls: list[float] = []
        with PeakMemory(device) as mem:
            while not walls or (sum(walls) < min_time and len(walls) < max_timed_runs):
                sync(device)
                t0 = time.perf_counter()
                out = _sample_all(model, problem, cell, n, b, seeds, device, dtype)
                sync(device)
                walls.append(time.perf_counter() - t0)
                if len(walls) == 1:
                    x, results = out  # the samples and NFE of the first timed run
    except (NonFiniteError, RuntimeError) as err:  # diverged, a solver's failure, out of memory
        rec.update(status="error", error=f"{type(err).__name__}: {err}")
        return rec
    nfe_calls = sum(r.nfe for r in results)
    x_prior = problem.sde.prior_sample((b, *problem.shape), generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    t_mid = 0.5 * (problem.sde.t_min + problem.sde.T)
    net = time_network_eval(model, x_prior, t_mid)
    wall = statistics.median(walls)
    rec.update(
        status="ok",
        nfe=nfe_calls / len(results),  # network evaluations per sample trajectory
        nfe_calls=nfe_calls,  # batch calls in total
        wall_s=wall,
        wall_min_s=min(walls),
        timed_runs=len(walls),
        loop_s=sum(r.wall_time for r in results),
        samples_per_s=n / wall,
        net_eval_s=net,
        overhead=wall / (nfe_calls * net) if nfe_calls else float("nan"),
        peak_mem_mb=mem.mb if device.type == "cuda" else tensor_mb,
        mem_method=mem.method if device.type == "cuda" else "tensor_peak",
        rss_growth_mb=None if device.type == "cuda" else mem.mb,
    )
    extra = {k: v for r in results[:1] for k, v in r.extra.items() if isinstance(v, (int, float, str, bool))}
    if extra:
        rec["extra"] = extra
    judge = quality.judge_for(problem, metric_fns, n, cell.seed, floor_repeats)
    rec.update(judge(problem.to_data(x) if problem.to_data is not None else x))
    rec["floor_repeats"] = floor_repeats
    if "mmd_bandwidth" in judge.info:
        rec["mmd_bandwidth"] = judge.info["mmd_bandwidth"]
    return rec


#: options of a sweep entry that go to the front door rather than to the sampler.
_FRONT = ("schedule", "rho", "t_min", "T", "denoise")


def _sampler_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in _FRONT}


def is_adaptive(entry: Entry) -> bool:
    """Whether an entry has no step budget: its sampler's ``fixed_grid`` trait is False for its options
    (``ode`` is adaptive with dopri5 and steps on the grid with ``method=euler``)."""
    from ..samplers import registry

    try:
        return not registry.get(entry.sampler).traits(_sampler_options(entry.options)).fixed_grid
    except (TypeError, ValueError):  # an unknown sampler or bad options: reported by _check_cells
        return False


def _check_cells(cells: list[Cell], problems: dict[str, Problem]) -> tuple[list[Cell], list[str], list[Cell]]:
    """Drop cells whose sampler is not registered or does not support the problem's SDE
    (they are not recorded, so they run once the sampler lands); unknown options raise.
    Cells of a peer that is not installed come back apart (the third list): they are recorded as
    ``unavailable``, so the table says so."""
    from ..samplers import registry

    keep, notes, missing = [], [], []
    seen: set[tuple[str, str]] = set()

    def note_once(key: tuple[str, str], text: str) -> None:  # one note per sampler (and problem)
        if key not in seen:
            seen.add(key)
            notes.append(text)

    for c in cells:
        if peers.is_peer(c.sampler):
            why = peers.unavailable(c.sampler)
            if why is not None:
                missing.append(c)
                note_once((c.sampler, ""), f"peer sampler {c.label}: {why}")
                continue
            peers.check_options(c.sampler, c.options)  # an unknown peer sampler or option: a mistake, raises
            try:
                peers.check_problem(c.sampler, c.options, problems[c.problem].sde)
            except ValueError as err:
                note_once((c.sampler, c.problem), f"{c.label} on {c.problem} skipped: {err}")
                continue
            keep.append(c)
            continue
        try:
            spec = registry.get(c.sampler)
        except ValueError as err:
            note_once((c.sampler, ""), f"sampler {c.sampler!r} skipped: {err}")
            continue
        try:
            opts = spec.validate(_sampler_options(c.options), fill=False, extra_valid=_FRONT)
        except TypeError as err:  # an unknown option: a mistake in the sweep, not a skip
            raise ValueError(str(err)) from None
        try:
            spec.check_sde(problems[c.problem].sde, opts)
        except ValueError as err:
            note_once((c.sampler, c.problem), f"{c.label} on {c.problem} skipped: {err}")
            continue
        keep.append(c)
    return keep, notes, missing


def unavailable_record(cell: Cell, reason: str) -> dict[str, Any]:
    """The record of a cell whose peer is not installed: status ``unavailable`` (run again once it is)."""
    return {"key": cell.key, "status": "unavailable", "error": reason, "problem": cell.problem, "sampler": cell.sampler,
            "label": cell.label, "series": cell.series, "options": json.dumps(cell.options, sort_keys=True),
            "steps": cell.steps, "seed": cell.seed, "n": cell.n,
            "time": datetime.datetime.now().isoformat(timespec="seconds")}


def run_sweep(
    sweep: Sweep,
    out_dir: str,
    *,
    progress: bool = True,
    retry_errors: bool = False,
    max_cells: int | None = None,
    on_cell: Callable[[Cell, dict[str, Any], int], None] | None = None,
    report: bool = True,
    log: Callable[[str], None] = print,
    shard_of: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Run the cells of ``sweep`` not yet recorded under ``out_dir``; write the table and plots.

    Args:
        retry_errors: run again the cells recorded with status ``error``.
        max_cells: stop after this many new cells (the rest run next time).
        on_cell: called after each stored cell with (cell, record, count of new cells so far).
        report: write ``table.md`` and the plots after the sweep (rank 0).
        shard_of: ``(rank, world)`` to run one shard without torch.distributed (it writes its
            shard file and returns; :func:`~scoresde.bench.store.merge_shards` joins them).

    Returns a summary: ``ran`` (new cells), ``skipped_done``, ``notes`` and ``records`` (all).
    Under torchrun, rank r runs the cells i with i % world == r and rank 0 merges the shards.
    """
    device = pick_device(sweep.device, distributed.env()[2])
    # One day of collective timeout: the shards may be very unequal.
    rank, world = shard_of if shard_of is not None else distributed.init(device, timeout=datetime.timedelta(days=1))
    collective = shard_of is None and world > 1
    dtype = {"float32": torch.float32, "float64": torch.float64}[sweep.dtype]

    problems = sweep.problem_objects()
    cells, notes, missing = _check_cells(sweep.cells(is_adaptive), problems)
    if not cells and not missing:
        raise ValueError("the sweep has no cell to run: " + ("; ".join(notes) or "no entries"))
    for note in notes:
        if rank == 0:
            log(note)
    # One writer per output folder (per shard under torchrun): a second sweep on it stops here, naming the first.
    lock_name = ".scoresde-lock" if rank == 0 else f".scoresde-lock.rank{rank}"
    with FolderLock(out_dir, lock_name, what="bench output folder"):
        mine = shard(cells, rank, world)
        store = ResultStore(out_dir, rank=rank if world > 1 else None)
        if rank == 0:
            _write_plan(out_dir, sweep)
        done = store.done_keys(retry_errors=retry_errors)
        recorded = {r["key"] for r in store.records()}
        for c in shard(missing, rank, world):  # a peer that is not installed: a row that says so (once)
            if c.key not in recorded:
                store.append(unavailable_record(c, peers.unavailable(c.sampler) or "unavailable"))
        todo = [c for c in mine if c.key not in done]
        if max_cells is not None:
            todo = todo[:max_cells]
        models: dict[str, Any] = {}
        metric_fns = {p: quality.available_metrics(problems[p], sweep.metrics) for p in problems}
        bar = _bar(len(todo), progress, rank)
        ran = 0
        try:
            for c in todo:
                problem = problems[c.problem]
                if c.problem not in models:
                    models[c.problem] = problem.make_model(device)
                if bar is not None:
                    bar.set_postfix_str(f"{c.problem} {c.label} steps={c.steps} seed={c.seed}")
                rec = run_cell(c, problem, models[c.problem], device=device, dtype=dtype, batch=sweep.batch,
                               metric_fns=metric_fns[c.problem], floor_repeats=sweep.floor_repeats, warmup=sweep.warmup,
                               min_time=sweep.min_time, max_timed_runs=sweep.max_timed_runs)
                rec["rank"] = rank
                store.append(rec)
                ran += 1
                if rec["status"] != "ok":
                    log(f"{c.label} on {c.problem} at steps={c.steps}, seed={c.seed}: {rec['error']}")
                if bar is not None:
                    bar.update(1)
                if on_cell is not None:
                    on_cell(c, rec, ran)
        finally:
            if bar is not None:
                bar.close()
        if collective:
            import torch.distributed as dist

            dist.barrier()
            records = merge_shards(out_dir) if rank == 0 else []
            dist.barrier()
        else:
            records = store.records()
        if report and rank == 0 and (world == 1 or collective):
            from .report import write_report

            write_report(out_dir, records, log=log)
        return {"ran": ran, "skipped_done": len([c for c in mine if c.key in done]), "todo": len(todo),
                "cells": len(cells), "notes": notes, "records": records, "rank": rank, "world": world}


def _bar(total: int, progress: bool, rank: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"bench[{rank}]" if rank else "bench", unit="cell")


def _write_plan(out_dir: str, sweep: Sweep) -> None:
    plan = {
        "entries": [{"sampler": e.sampler, "options": e.options, "label": e.name, "steps": e.steps} for e in sweep.entries],
        "steps": list(sweep.steps), "problems": sweep.problem_names(), "seeds": list(sweep.seeds), "n": sweep.n,
        "batch": sweep.batch, "device": sweep.device, "dtype": sweep.dtype,
        "metrics": None if sweep.metrics is None else list(sweep.metrics), "floor_repeats": sweep.floor_repeats,
        "warmup": sweep.warmup, "min_time": sweep.min_time, "max_timed_runs": sweep.max_timed_runs,
        "environment": environment(),
    }
    atomic_write_text(os.path.join(out_dir, "sweep.json"), json.dumps(plan, indent=2, default=str) + "\n")
