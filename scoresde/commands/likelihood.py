"""``scoresde likelihood``: PF-ODE log-likelihood of a data file under a trained checkpoint.

The data file is in DATA space (what the user trained on, before the checkpoint's scaler). Each
batch is mapped to model space with ``scaler.to_model``; the density there comes from
:func:`scoresde.likelihood.log_likelihood`, and the change of variables gives the data-space
density ``log p_data(x) = log p_model(to_model(x)) + log|det J|``. The scaler must be elementwise
affine (``to_model(x) = a x + b``, then ``log|det J| = sum log|a|``) or provide
``log_abs_det_jacobian(x)``.

Integer-typed data are pixels: they are dequantised in data units, ``v = x + u`` with
``u ~ U[0, 1)^D`` (unit cells, no offset), so ``log P(x) >= E_u log p_data(v)`` and bits/dim is
``-log p_data(v) / (D ln 2)``. Float data that look quantised (integer-valued, or at most 256
distinct values) are refused: store pixels with an integer dtype, or dequantise them yourself.
"""

from __future__ import annotations

import json
import math
import os

from . import check_output_file, int_arg

HELP = "PF-ODE log-likelihood of a data file under a checkpoint (nats, nats/dim; bits/dim for pixels)"


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (scoresde.checkpoint.load_model)")
    p.add_argument("--data", required=True, help="data file in data space: .npy, or .npz (see --key)")
    p.add_argument("--key", default=None, help="array name in a .npz (default: 'x', or its only array)")
    p.add_argument("--estimator", default="auto", choices=["auto", "exact", "hutchinson"],
                   help="divergence: exact (D backward passes) or hutchinson; auto = exact for small D")
    p.add_argument("--n-probes", type=int, default=1, help="Hutchinson probes per sample (>= 2 gives a probe standard error)")
    p.add_argument("--probe", default="rademacher", choices=["rademacher", "gaussian"], help="Hutchinson probe law")
    p.add_argument("--method", default="dopri5", help="torchdiffeq solver")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (score_sde: 1e-5)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (score_sde: 1e-5)")
    p.add_argument("--t-min", type=float, default=None, help="start time (default: the SDE's t_min)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per ODE solve")
    p.add_argument("--limit", type=int, default=0, help="use only the first N samples (0 = all)")
    p.add_argument("--seed", type=int_arg(0), default=0, help="seed of the probes and of the dequantisation noise")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", default=None, help="write a JSON summary (and per-sample values) here")


def load_data(path: str, key: str | None = None):
    """The array of a .npy, or of a .npz (``key``, else 'x', else its only array)."""
    import numpy as np

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--data {path!r} is not a file")
    if path.endswith(".npy"):
        if key is not None:
            raise ValueError(f"--key applies to .npz files; --data {path!r} is a .npy file (it holds one array)")
        return np.load(path, allow_pickle=False)
    if not path.endswith(".npz"):
        raise ValueError(f"--data must be a .npy or .npz file; got {path!r}")
    with np.load(path, allow_pickle=False) as f:
        names = list(f.keys())
        if key is None:
            key = "x" if "x" in names else (names[0] if len(names) == 1 else None)
        if key not in names:
            raise ValueError(f"--key {key!r} is not an array of {path!r}; it holds: {', '.join(names)}")
        return f[key]


def _to_model(scaler, v):
    return v if scaler is None else scaler.to_model(v)


def log_jacobian(scaler, v):
    """log|det d to_model / dx| per sample (B,) float64 at data-space points v (B, *D)."""
    import torch

    B = v.shape[0]
    if scaler is None:
        return torch.zeros(B, dtype=torch.float64)
    if hasattr(scaler, "log_abs_det_jacobian"):
        return torch.as_tensor(scaler.log_abs_det_jacobian(v), dtype=torch.float64).reshape(B)
    zero, one = torch.zeros_like(v[:1]), torch.ones_like(v[:1])
    b = torch.as_tensor(scaler.to_model(zero), dtype=torch.float64)
    a = torch.as_tensor(scaler.to_model(one), dtype=torch.float64) - b
    y = torch.as_tensor(scaler.to_model(v), dtype=torch.float64)
    if not torch.allclose(y, a * v.to(torch.float64) + b, rtol=1e-5, atol=1e-6 * float(y.abs().max().clamp_min(1.0))):
        raise ValueError(
            f"the checkpoint's scaler {type(scaler).__name__} is not elementwise affine, so the log-Jacobian of "
            "to_model is unknown: give the scaler a log_abs_det_jacobian(x) method"
        )
    if bool((a == 0).any()):
        raise ValueError("the checkpoint's scaler maps some dimension to a constant (zero scale): no density")
    return torch.full((B,), float(a.abs().log().sum()), dtype=torch.float64)


def _check_float_data(x) -> None:
    import torch

    if x.ndim < 3:
        return
    if bool((x == x.round()).all()) or (x.numel() >= 1024 and torch.unique(x).numel() <= 256):
        raise ValueError(
            "the data look quantised (integer-valued or at most 256 distinct values) but are stored as floats: "
            "store pixels with an integer dtype (e.g. uint8) so that they are dequantised here, or dequantise them yourself"
        )


def evaluate(model, sde, scaler, data, *, estimator="auto", n_probes=1, probe="rademacher", method="dopri5",
             rtol=1e-5, atol=1e-5, t_min=None, batch_size=256, seed=0, device="cpu") -> dict:
    """Per-sample data-space log-likelihoods of ``data`` (array (N, *D)) and their summary (a dict)."""
    import numpy as np
    import torch

    from ..likelihood import EXACT_MAX_DIM, dequantize, log_likelihood
    from ..random import make_seeds

    a = np.asarray(data)
    if a.dtype == object or a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"the data must be a real numeric array (float, or integer pixels); got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():  # name the data, not the model
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(1)
        raise ValueError(f"the data contain NaN or Inf in {int(bad.sum())} of {len(a)} samples (first: sample "
                         f"{int(np.flatnonzero(bad)[0])}); their likelihood is undefined")
    x_all = torch.as_tensor(a)
    if x_all.ndim < 2:
        raise ValueError(f"the data must have shape (N, *D); got {tuple(x_all.shape)}")
    N, D = x_all.shape[0], x_all[0].numel()
    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive; got {batch_size}")
    if estimator == "auto":
        estimator = "exact" if D <= EXACT_MAX_DIM else "hutchinson"
    pixels = not x_all.is_floating_point()
    if pixels and bool((x_all < 0).any()):
        raise ValueError("integer data must be non-negative pixels")
    if not pixels:
        _check_float_data(x_all)
    bits = max(1, math.ceil(math.log2(float(x_all.max()) + 1))) if pixels else None
    g = torch.Generator().manual_seed(seed)
    deq_seeds, probe_seeds = make_seeds(N, generator=g), make_seeds(N, generator=g)  # per sample: batch-size free

    logp, se_probe, nfe, logj = [], [], 0, None
    for i in range(0, N, batch_size):
        xb = x_all[i : i + batch_size].to(device)
        if pixels:  # v = x + u in data units: unit cells, offset 0
            xb, _ = dequantize(xb, bits, data_range=(0.0, 2.0**bits), dtype=torch.float64, seeds=deq_seeds[i : i + batch_size])
        xb = xb.to(torch.float64)
        lj = log_jacobian(scaler, xb).to(torch.float64)
        y = torch.as_tensor(_to_model(scaler, xb), dtype=torch.float64, device=device)
        r = log_likelihood(model, sde, y, estimator=estimator, n_probes=n_probes, probe=probe, method=method, rtol=rtol,
                           atol=atol, t_min=t_min, dequantize=False, seeds=probe_seeds[i : i + batch_size])
        logp.append(r.logp.cpu() + lj.cpu())
        if r.stderr is not None:
            se_probe.append(r.stderr.cpu())
        nfe += r.nfe
        logj = float(lj[0])
    lp = torch.cat(logp)
    mean = float(lp.mean())
    se = float(lp.std() / math.sqrt(N)) if N > 1 else float("nan")
    out = {
        "n": N, "dim": D, "estimator": estimator, "n_probes": n_probes if estimator == "hutchinson" else 0,
        "method": method, "rtol": rtol, "atol": atol, "t_min": float(sde.t_min if t_min is None else t_min),
        "nfe": nfe, "log_jacobian": logj, "dequantized": pixels, "bits": bits,
        "mean_logp": mean, "stderr_logp": se, "mean_logp_per_dim": mean / D, "stderr_logp_per_dim": se / D,
        "stderr_probes": float(torch.cat(se_probe).pow(2).sum().sqrt() / N) if se_probe else None,
        "logp": [float(v) for v in lp],
    }
    if pixels:
        out["mean_bpd"] = -mean / (D * math.log(2.0))
        out["stderr_bpd"] = se / (D * math.log(2.0))
    return out


def format_summary(res: dict) -> str:
    probes = f", probe s.e. {res['stderr_probes']:.4g}" if res.get("stderr_probes") is not None else ""
    lines = [
        f"{res['n']} samples, D = {res['dim']}, estimator {res['estimator']}"
        + (f" ({res['n_probes']} probes)" if res["n_probes"] else "")
        + f", {res['method']} rtol {res['rtol']:g} atol {res['atol']:g}, t_min {res['t_min']:g}, NFE {res['nfe']}",
        f"log p (nats, data space):   {res['mean_logp']:.6g} +- {res['stderr_logp']:.4g} (s.e. over the data{probes})",
        f"log p / dim (nats):         {res['mean_logp_per_dim']:.6g} +- {res['stderr_logp_per_dim']:.4g}",
    ]
    if res.get("mean_bpd") is not None:
        lines.append(f"bits/dim (dequantised):     {res['mean_bpd']:.6g} +- {res['stderr_bpd']:.4g}")
    return "\n".join(lines)


def run(args) -> int:
    import torch

    from ..checkpoint import load_model  # written separately; imported lazily

    if args.out:
        check_output_file(args.out)  # before the computation, not after it
    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0 (0 = all samples); got {args.limit}")
    from ..distributed import pick_device

    args.device = str(pick_device(args.device))
    model, sde, scaler = load_model(args.checkpoint)
    if isinstance(model, torch.nn.Module):
        model = model.to(args.device).eval()
    data = load_data(args.data, args.key)
    if args.limit:
        data = data[: args.limit]
    if len(data) == 0:
        raise ValueError(f"--data {args.data!r} holds no samples")
    res = evaluate(model, sde, scaler, data, estimator=args.estimator, n_probes=args.n_probes, probe=args.probe,
                   method=args.method, rtol=args.rtol, atol=args.atol, t_min=args.t_min, batch_size=args.batch_size,
                   seed=args.seed, device=args.device)
    print(format_summary(res))
    if args.out:
        from .._utils import atomic_write_text

        res = dict(res, checkpoint=args.checkpoint, data=args.data)
        atomic_write_text(args.out, json.dumps(res, indent=1))
        print(f"wrote {args.out}")
    return 0
