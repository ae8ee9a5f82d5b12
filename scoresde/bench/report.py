"""Tables and plots from benchmark records (``results.jsonl``).

Records are averaged over seeds per (problem, sampler label, steps); a peer sampler that is not
installed (records with status ``unavailable``) is one row that says so. The Markdown table gives,
per problem, each metric divided by its noise floor (1 = indistinguishable from exact samples at
this n), the raw sliced W2, NFE, wall time, samples/second, the overhead over bare network time
and the peak memory. Plots (matplotlib Agg): quality vs NFE and quality vs wall time, one line per
sampler (peers' samplers dashed), log axes, the noise floor as a horizontal band (mean +- one std over the
floor repeats and seeds).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any, Callable, Iterable

from .._utils import atomic_write_text
from ..metrics import METRICS as _METRICS
from ..plots import pyplot, save_figure
from .peers import is_peer
from .quality import METRICS

__all__ = ["aggregate", "markdown_table", "pivot_table", "plot_problem", "write_report", "floor_band"]

_NAMES = {m: _METRICS.get(m).meta["label"] for m in METRICS}


def _mean(vs: list[float]) -> float:
    vs = [v for v in vs if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vs) / len(vs) if vs else float("nan")


def _std(vs: list[float]) -> float:
    vs = [v for v in vs if v is not None and not math.isnan(v)]
    if len(vs) < 2:
        return 0.0
    m = sum(vs) / len(vs)
    return math.sqrt(sum((v - m) ** 2 for v in vs) / (len(vs) - 1))


def aggregate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (problem, label, steps): means over seeds (``*_std``: spread over seeds).

    A group with any diverged seed keeps ``errors`` (the count) and averages the others."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    order: list[tuple] = []
    for r in records:
        k = (r["problem"], r["label"], r["steps"])
        if k not in groups:
            order.append(k)
        groups[k].append(r)
    rows = []
    for k in order:
        rs = groups[k]
        ok = [r for r in rs if r.get("status") == "ok"]
        row: dict[str, Any] = {"problem": k[0], "label": k[1], "steps": k[2], "sampler": rs[0]["sampler"],
                               "series": rs[0].get("series") or k[1],
                               "seeds": len(rs), "errors": len(rs) - len(ok), "n": rs[0]["n"]}
        if not ok:
            row["error"] = rs[0].get("error", "")
        if rs and all(r.get("status") == "unavailable" for r in rs):
            row["unavailable"] = rs[0].get("error") or "not installed"  # a peer sampler that is not installed
        for f in ("nfe", "wall_s", "samples_per_s", "overhead", "peak_mem_mb", "net_eval_s"):
            row[f] = _mean([r.get(f) for r in ok])
        row["mem_method"] = ok[0].get("mem_method", "") if ok else ""
        for m in METRICS:
            if any(m in r for r in ok):
                vals = [r.get(m) for r in ok]
                row[m] = _mean(vals)
                row[f"{m}_std"] = _std(vals)
                row[f"{m}_floor"] = _mean([r.get(f"{m}_floor") for r in ok])
                row[f"{m}_ratio"] = _mean([r.get(f"{m}_ratio") for r in ok])
        rows.append(row)
    return rows


def floor_band(records: list[dict[str, Any]], metric: str) -> tuple[float, float, float] | None:
    """(level, low, high) of a metric's noise floor over the records' seeds: the floor level (the
    rms of the exact-vs-reference repeats) +- one std of the repeats, joined over seeds."""
    per_seed = {}
    for r in records:
        if r.get("status") == "ok" and f"{metric}_floor" in r:
            per_seed[(r["seed"], r["n"])] = (r[f"{metric}_floor"], r.get(f"{metric}_floor_std", 0.0))
    if not per_seed:
        return None
    means = [m for m, _ in per_seed.values()]
    lo = min(m - s for m, s in per_seed.values())
    hi = max(m + s for m, s in per_seed.values())
    return _mean(means), lo, hi


def _num(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def markdown_table(records: list[dict[str, Any]], *, problem: str | None = None) -> str:
    """Markdown tables (one per problem) of the aggregated records."""
    rows = aggregate(records)
    problems = [problem] if problem else list(dict.fromkeys(r["problem"] for r in rows))
    out = []
    for p in problems:
        prow = [r for r in rows if r["problem"] == p]
        precs = [r for r in records if r["problem"] == p]
        metrics = [m for m in METRICS if any(m in r for r in prow)]
        seeds = sorted({r["seed"] for r in precs})
        ns = sorted({r["n"] for r in precs})
        reps = sorted({r.get("floor_repeats") for r in precs if r.get("floor_repeats")})
        out.append(f"### {p}\n")
        head_line = f"n = {', '.join(map(str, ns))} samples per cell; seeds {', '.join(map(str, seeds))} (means over seeds)."
        if reps:
            head_line += f" Noise floors (rms of {reps[0]} independent exact or held-out sets of the same size):"
        out.append(head_line)
        floors = []
        for m in metrics:
            band = floor_band(precs, m)
            if band:
                floors.append(f"{_NAMES[m]} {band[0]:.4g} (band {band[1]:.3g} to {band[2]:.3g})")
        if floors:
            out.append("; ".join(floors) + ".\n")
        else:
            out.append("")
        head = ["sampler", "steps", "NFE"]
        for m in metrics:
            head.append(f"{_NAMES[m]}/floor")
        if "sw2" in metrics:
            head.append("SW2")
        head += ["wall (s)", "samples/s", "overhead", "peak mem (MB)"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
        missing: dict[str, str] = {}
        for r in prow:
            if "unavailable" in r:  # one row per peer that is not installed, whatever its step budgets
                if r["label"] not in missing:
                    missing[r["label"]] = r["unavailable"]
                    out.append("| " + " | ".join([f"{r['label']} (not installed)"] + ["-"] * (len(head) - 1)) + " |")
                continue
            cells = [r["label"], "adaptive" if r["steps"] == 0 else str(r["steps"]), _nfe(r)]
            if r["errors"] == r["seeds"]:
                cells[0] += " (diverged)"
                cells += ["-"] * (len(head) - 3)
            else:
                for m in metrics:
                    cells.append(_num(r.get(f"{m}_ratio"), ".2f"))
                if "sw2" in metrics:
                    cells.append(_num(r.get("sw2"), ".4f"))
                cells += [_num(r["wall_s"], ".3g"), _num(r["samples_per_s"], ".4g"), _num(r["overhead"], ".2f"),
                          _num(r["peak_mem_mb"], ".1f")]
            if r["errors"] and r["errors"] < r["seeds"]:
                cells[0] += f" ({r['errors']}/{r['seeds']} seeds diverged)"
            out.append("| " + " | ".join(cells) + " |")
        mm = sorted({r.get("mem_method") for r in precs if r.get("mem_method")})
        out.append("")
        for label, why in missing.items():
            out.append(f"{label}: {why}; its cells run once it is installed.")
        out.append("overhead = wall time / (NFE x one network evaluation timed alone on the same batch); "
                   f"peak memory by {', '.join(mm) or '-'} (see docs/benchmarking.md).\n")
    return "\n".join(out)


def _nfe(r: dict[str, Any]) -> str:
    v = r.get("nfe")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


def pivot_table(records: list[dict[str, Any]], problem: str, metric: str = "sw2", *, value: str = "ratio",
                show_nfe: bool = True) -> str:
    """A compact Markdown table: one row per sampler label, one column per step budget; each cell
    is the metric (``value="ratio"``: divided by its floor; ``"raw"``; or a record field such as
    ``"wall_s"``), with the NFE in parentheses. Adaptive cells go in an ``adaptive`` column."""
    rows = [r for r in aggregate(records) if r["problem"] == problem]
    steps = sorted({r["steps"] for r in rows if r["steps"]}) + ([0] if any(r["steps"] == 0 for r in rows) else [])
    labels = list(dict.fromkeys(r["label"] for r in rows))
    field = {"ratio": f"{metric}_ratio", "raw": metric}.get(value, value)
    head = ["sampler"] + ["adaptive" if s == 0 else str(s) for s in steps]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(steps) + "|"]
    for lab in labels:
        cells = [lab]
        for st in steps:
            r = next((x for x in rows if x["label"] == lab and x["steps"] == st), None)
            if r is None:
                cells.append("")
            elif "unavailable" in r:
                cells.append("not installed")
            elif r["errors"] == r["seeds"]:
                cells.append("diverged")
            else:
                v = r.get(field)
                txt = _num(v, ".3g" if field in ("wall_s", "overhead") else ".2f")
                cells.append(f"{txt} ({_nfe(r)})" if show_nfe else txt)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_problem(records: list[dict[str, Any]], problem: str, metric: str, path: str, *, title: str | None = None) -> bool:
    """Quality vs NFE and vs wall time for one problem and metric; False when nothing to plot."""
    plt = pyplot()

    rows = [r for r in aggregate(records) if r["problem"] == problem and metric in r and r["errors"] < r["seeds"]]
    if not rows:
        return False
    precs = [r for r in records if r["problem"] == problem]
    band = floor_band(precs, metric)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = list(dict.fromkeys(r["series"] for r in rows))
    cmap = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    for i, lab in enumerate(labels):
        rs = sorted((r for r in rows if r["series"] == lab), key=lambda r: r["nfe"])
        y = [r[metric] for r in rs]
        yerr = [r.get(f"{metric}_std", 0.0) for r in rs]
        peer = is_peer(rs[0]["sampler"])  # a peer's sampler: dashed, square markers
        for ax, xkey in zip(axes, ("nfe", "wall_s"), strict=True):
            x = [r[xkey] for r in rs]
            ax.errorbar(x, y, yerr=yerr if any(yerr) else None, marker="s" if peer else "o", ms=4, lw=1.3, capsize=2,
                        ls="--" if peer else "-", color=cmap(i % cmap.N), label=lab)
    for ax, xl in zip(axes, ("NFE (network evaluations per sample)", "wall time (s)"), strict=True):
        if band:
            ax.axhspan(max(band[1], 1e-12), band[2], color="0.7", alpha=0.5, lw=0, label="noise floor (exact sets, rms +- std)")
            ax.axhline(band[0], color="0.4", lw=0.8, ls="--")
        ax.set_xscale("log")
        if any(r[metric] <= 0 for r in rows) and band:  # unbiased estimators (MMD^2, energy) can be < 0
            ax.set_yscale("symlog", linthresh=max(band[0], 1e-12))
        else:
            ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(_NAMES.get(metric, metric))
        ax.grid(True, which="both", alpha=0.25)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    n = precs[0]["n"] if precs else "?"
    fig.suptitle(title or f"{problem}: {_NAMES.get(metric, metric)} vs cost (n = {n}; mean over seeds)")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def write_report(out_dir: str, records: list[dict[str, Any]], *, metrics: Iterable[str] | None = None,
                 log: Callable[[str], None] = print) -> list[str]:
    """Write ``table.md`` and ``plots/{problem}_{metric}.png``; returns the written paths."""
    if not records:
        log(f"no results in {out_dir} yet: nothing to report")
        return []
    written = []
    table = markdown_table(records)
    path = os.path.join(out_dir, "table.md")
    atomic_write_text(path, table)
    written.append(path)
    problems = list(dict.fromkeys(r["problem"] for r in records))
    for p in problems:
        for m in metrics or METRICS:
            png = os.path.join(out_dir, "plots", f"{p.replace(':', '_').replace('/', '_')}_{m}.png")
            if plot_problem(records, p, m, png):
                written.append(png)
    log(f"wrote {path} and {len(written) - 1} plot(s) under {os.path.join(out_dir, 'plots')}")
    return written
