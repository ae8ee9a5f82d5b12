"""Crash-safe results: one JSON line per finished cell, plus a CSV view of the same records.

* ``results.jsonl`` is the source of truth. Each finished cell is appended as one complete line,
  flushed and fsync'ed, so a crash loses at most the cell that was running. A torn last line
  (a crash in the middle of a write) is dropped, with a warning, the next time the store opens.
* ``results.csv`` is rewritten from the JSONL records after every cell, atomically (temp file,
  fsync, rename): it is always a complete table.
* A record whose ``key`` appears again supersedes the earlier one (``retry_errors`` re-runs).
* A record with status ``unavailable`` (a peer sampler that is not installed) is not a finished
  cell: it runs, and is superseded, once the peer is installed.
* Under ``torchrun`` each rank appends to ``results.rank{R}.jsonl``; rank 0 merges the shards into
  ``results.jsonl`` at the end (:func:`merge_shards`) and removes them.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import warnings
from typing import Any, Iterable

from .._utils import atomic_write_text

__all__ = ["ResultStore", "read_jsonl", "merge_shards", "dedupe", "CSV_COLUMNS"]

#: Leading CSV columns (in this order); metric columns and anything else follow, sorted.
CSV_COLUMNS = (
    "key", "status", "problem", "sampler", "label", "series", "options", "steps", "seed", "n", "batch",
    "nfe", "nfe_calls", "wall_s", "wall_min_s", "timed_runs", "loop_s", "samples_per_s", "net_eval_s", "overhead",
    "peak_mem_mb", "mem_method", "device", "dtype", "threads",
)


def read_jsonl(path: str) -> tuple[list[dict[str, Any]], int]:
    """Records of a JSONL file and the number of unreadable lines (a torn write)."""
    if not os.path.exists(path):
        return [], 0
    records, bad = [], 0
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and "key" in rec:
            records.append(rec)
        else:
            bad += 1
    return records, bad


def dedupe(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per key, the last one winning, in first-appearance order."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        out[r["key"]] = r
    return list(out.values())


def _jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


def csv_text(records: list[dict[str, Any]]) -> str:
    cols = list(CSV_COLUMNS) + sorted({k for r in records for k in r} - set(CSV_COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
    return buf.getvalue()


class ResultStore:
    """The results of one output folder (or of one rank's shard of it)."""

    def __init__(self, out_dir: str, *, rank: int | None = None):
        self.dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.main_path = os.path.join(out_dir, "results.jsonl")
        self.path = self.main_path if rank is None else os.path.join(out_dir, f"results.rank{rank}.jsonl")
        self.csv_path = os.path.join(out_dir, "results.csv")
        self.is_shard = rank is not None
        self._repair(self.path)

    @staticmethod
    def _repair(path: str) -> None:
        records, bad = read_jsonl(path)
        if bad:
            warnings.warn(f"{path}: dropped {bad} unreadable line(s) (an interrupted write); those cells will run again",
                          stacklevel=3)
            atomic_write_text(path, _jsonl_text(records))

    def records(self) -> list[dict[str, Any]]:
        """All finished records visible to this store (main file and every shard), deduplicated."""
        recs, _ = read_jsonl(self.main_path)
        for p in sorted(glob.glob(os.path.join(self.dir, "results.rank*.jsonl"))):
            recs += read_jsonl(p)[0]
        return dedupe(recs)

    def done_keys(self, *, retry_errors: bool = False) -> set[str]:
        """Keys of finished cells; ``unavailable`` ones (a peer not installed) never count as done."""
        return {r["key"] for r in self.records()
                if r.get("status") != "unavailable" and not (retry_errors and r.get("status") != "ok")}

    def append(self, record: dict[str, Any]) -> None:
        """Append one complete line, flushed and fsync'ed; then refresh the CSV (main store only)."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:  # an unbuffered write may be partial
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as err:  # a full disk: take the partial line back, so the file holds whole records only
                os.ftruncate(fd, start)
                raise OSError(err.errno, f"cannot append the record of cell {record.get('key')!r} to {self.path!r}: "
                                         f"{err.strerror or err}; the results so far are intact") from None
        finally:
            os.close(fd)
        if not self.is_shard:
            self.write_csv()

    def write_csv(self) -> None:
        atomic_write_text(self.csv_path, csv_text(self.records()))


def merge_shards(out_dir: str) -> list[dict[str, Any]]:
    """Merge ``results.rank*.jsonl`` into ``results.jsonl`` (atomic), remove the shards, write the CSV."""
    store = ResultStore(out_dir)
    records = store.records()
    atomic_write_text(store.main_path, _jsonl_text(records))
    for p in glob.glob(os.path.join(out_dir, "results.rank*.jsonl")):
        os.remove(p)
    store.write_csv()
    return records
