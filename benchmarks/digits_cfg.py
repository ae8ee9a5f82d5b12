"""The class-conditional digits model under classifier-free guidance: per-class accuracy and FD.

Samples a checkpoint trained with ``scoresde train --data digits --conditional --label-dropout P``
(docs/guidance.md) through the ``scoresde sample`` command, ``--class all --seeds 0-(n-1)
--guidance w`` for each weight w, and measures:

* per-class accuracy: the fraction of the samples of class k that the shipped digits classifier
  (:func:`scoresde.features.digits_logits`, argmax) labels k; beside it the classifier's own
  per-class accuracy on the held-out real test split, and the mean classifier probability of the
  asked-for class;
* FD / floor: the Frechet digits distance (:func:`scoresde.metrics.compare` with the ``fd``
  metric) of 500 samples (the first 50 seeds of each class) against 500 real digits drawn from
  all 1797, over the floor of two disjoint real sets of 500 (5 pairs), the protocol of the
  sampler tables in docs/results.md;
* the null label (the unconditional model the same weights learned): FD and the histogram of the
  classes the classifier assigns to its samples.

    python benchmarks/digits_cfg.py --checkpoint runs/digits-cfg            # results/digits_cfg/
    python benchmarks/digits_cfg.py --checkpoint runs/digits-cfg --docs     # + docs/data, docs/figures

The .npz files of each weight are kept in --out and reused on a rerun (delete them to resample).
One torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from scoresde import sample
from scoresde._utils import atomic_write_bytes, atomic_write_text
from scoresde.checkpoint import load_checkpoint
from scoresde.cli import main as cli
from scoresde.data import dataset_from_config
from scoresde.features import digits_logits, load_digits_split
from scoresde.metrics import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FD_N, FD_REPEATS = 500, 5


def _weights(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _wname(w: float) -> str:
    return f"{w:g}".replace(".", "p")


def sample_weight(args, w: float) -> str:
    """Run ``scoresde sample`` for one guidance weight (reuses an existing .npz)."""
    npz = os.path.join(args.out, f"w{_wname(w)}.npz")
    if not os.path.exists(npz):
        rc = cli(["sample", "--checkpoint", args.checkpoint, "--sampler", args.sampler, "--steps", str(args.steps),
                  "--seeds", f"0-{args.per_class - 1}", "--class", "all", "--guidance", f"{w:g}",
                  "--batch-size", str(args.batch_size), "--out", npz, "--threads", "1"])
        if rc:
            sys.exit(f"scoresde sample failed for w={w:g} (exit {rc})")
    return npz


def sample_null(args, ck) -> dict:
    """Samples of the null label (the unconditional model), through the front door."""
    npz = os.path.join(args.out, "null.npz")
    if not os.path.exists(npz):
        k = int(ck.config["net"]["kwargs"]["num_classes"])
        n = FD_N
        seeds = torch.arange(n, dtype=torch.int64)
        t0 = time.perf_counter()
        with torch.no_grad():
            res = sample(ck.model, ck.sde, (n, *ck.data_shape), args.sampler, args.steps, seeds=seeds,
                         cond={"y": torch.full((n,), k, dtype=torch.int64)})
        x = ck.scaler.from_model(res.x.float())
        meta = {"nfe_per_batch": [res.nfe], "wall_time": time.perf_counter() - t0, "null_label": k}
        np.savez(npz, samples=x.numpy(), seeds=seeds.numpy(), meta=np.array(json.dumps(meta)))
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def evaluate(x_model: torch.Tensor, labels: torch.Tensor | None, pool: torch.Tensor, k: int, per_class: int) -> dict:
    logits = digits_logits(x_model)
    pred = logits.argmax(1)
    out: dict = {"pred_hist": torch.bincount(pred, minlength=k).tolist()}
    if labels is not None:
        prob = torch.softmax(logits, 1).gather(1, labels[:, None])[:, 0]
        out["acc"] = [float((pred[labels == c] == c).double().mean()) for c in range(k)]
        out["acc_all"] = float((pred == labels).double().mean())
        out["prob"] = float(prob.mean())
        take = torch.cat([torch.arange(FD_N // k) + c * per_class for c in range(k)])  # first seeds of each class
        x_fd = x_model[take]
    else:
        x_fd = x_model[:FD_N]
    fd = compare(x_fd.double(), pool, ("fd",), generator=torch.Generator().manual_seed(0), repeats=FD_REPEATS)["fd"]
    out.update(fd=fd["value"], fd_floor=fd["floor"], fd_floor_std=fd["floor_std"], fd_ratio=fd["ratio"])
    return out


def table(rows: list[dict], real_acc: list[float], k: int) -> str:
    head = ("| accuracy (%) | " + " | ".join(str(c) for c in range(k))
            + " | all | mean p(y\\|x) | FD | FD / floor | NFE | time (s) |")
    lines = [head, "|" + "---|" * (k + 7)]
    lines.append("| real test digits | " + " | ".join(f"{100 * a:.1f}" for a in real_acc)
                 + f" | {100 * float(np.mean(real_acc)):.2f} | | | | | |")
    for r in rows:
        m = r["m"]
        if "acc" in m:
            cells = " | ".join(f"{100 * a:.1f}" for a in m["acc"])
            lines.append(f"| w = {r['w']:g} | {cells} | {100 * m['acc_all']:.2f} | {m['prob']:.3f} | {m['fd']:.2f} | "
                         f"{m['fd_ratio']:.2f} | {r['nfe']} | {r['time']:.0f} |")
        else:
            cells = " | ".join(f"{100 * h / sum(m['pred_hist']):.1f}" for h in m["pred_hist"])
            lines.append(f"| null label (% classified as) | {cells} | | | {m['fd']:.2f} | {m['fd_ratio']:.2f} | "
                         f"{r['nfe']} | {r['time']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--weights", type=_weights, default=[0.0, 1.0, 3.0, 7.0], help="guidance weights, e.g. 0,1,3,7")
    p.add_argument("--per-class", type=int, default=200, help="samples per class (seeds 0..n-1)")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "digits_cfg"))
    p.add_argument("--docs", action="store_true", help="also write docs/data/digits_cfg.{md,json} and the figures")
    p.add_argument("--figures", type=_weights, default=[0.0, 3.0], help="weights whose grids go to docs/figures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    ck = load_checkpoint(args.checkpoint)
    k = int(ck.config["net"]["kwargs"]["num_classes"])
    if args.per_class * k < FD_N or FD_N % k:
        sys.exit(f"--per-class must give at least {FD_N // k} samples per class")
    pool = dataset_from_config(ck.config["data"]).x.double()  # the training digits in model space ([-1, 1])
    _, _, x_te, y_te = load_digits_split()
    pred_te = digits_logits(x_te).argmax(1)
    real_acc = [float((pred_te[y_te == c] == c).double().mean()) for c in range(k)]

    rows = []
    for w in args.weights:
        npz = sample_weight(args, w)
        with np.load(npz, allow_pickle=False) as z:
            x, labels, meta = torch.from_numpy(z["samples"]), torch.from_numpy(z["labels"]), json.loads(str(z["meta"]))
        m = evaluate(ck.scaler.to_model(x), labels, pool, k, args.per_class)
        rows.append({"w": w, "m": m, "nfe": meta["nfe_per_batch"][0], "time": meta["wall_time"], "n": int(x.shape[0])})
        print(f"w={w:g}: accuracy {m['acc_all']:.3f}, FD {m['fd']:.3f} ({m['fd_ratio']:.2f} x floor)", flush=True)
    z = sample_null(args, ck)
    m = evaluate(ck.scaler.to_model(torch.from_numpy(z["samples"])), None, pool, k, args.per_class)
    meta = json.loads(str(z["meta"]))
    rows.append({"w": None, "m": m, "nfe": meta["nfe_per_batch"][0], "time": meta["wall_time"], "n": FD_N})

    md = table(rows, real_acc, k)
    head = (f"Checkpoint {ck.path} (step {ck.step}, label_dropout {ck.config['train'].get('label_dropout')}); "
            f"{args.sampler}, {args.steps} steps, {args.per_class} samples per class (seeds 0-{args.per_class - 1}); "
            f"FD: n = {FD_N} against real digits, floor {rows[0]['m']['fd_floor']:.2f} +- {rows[0]['m']['fd_floor_std']:.2f} "
            f"over {FD_REPEATS} pairs of real sets; null label: {FD_N} samples; one torch thread.\n\n")
    text = head + md + "\n"
    print(text)
    atomic_write_text(os.path.join(args.out, "digits_cfg.md"), text)
    atomic_write_text(os.path.join(args.out, "digits_cfg.json"), json.dumps(
        {"checkpoint": str(ck.path), "step": ck.step, "sampler": args.sampler, "steps": args.steps,
         "per_class": args.per_class, "real_test_accuracy": real_acc, "rows": rows}, indent=1))
    if args.docs:
        data, figs = os.path.join(ROOT, "docs", "data"), os.path.join(ROOT, "docs", "figures")
        atomic_write_text(os.path.join(data, "digits_cfg.md"), text)
        for w in args.figures:
            with open(os.path.join(args.out, f"w{_wname(w)}.png"), "rb") as fh:
                atomic_write_bytes(os.path.join(figs, f"digits_cfg_w{_wname(w)}.png"), fh.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
