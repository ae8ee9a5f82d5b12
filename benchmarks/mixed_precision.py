"""Mixed precision: the network in bf16 / fp16, the sampler's state and coefficients in float32.

A network in low precision is emulated exactly on an exact mixture: an eps-network module holding one
parameter of the low dtype, so that ``ScoreModel`` casts the state and ``c_noise`` (here t) to that
dtype on the way in, and the exact eps (computed from those rounded inputs) is rounded to it on the
way out, as a real bf16 network's input and output would be. The sampler itself runs in float32 (its
grid and coefficients in float64, cast at the network boundary).

Reports, per sampler, the pathwise error against the same sampler in float64 from the same x_T and
noise (rms of ||x - x64|| / sqrt(d)), and SW2 / floor against exact samples (n = 2000).

    python benchmarks/mixed_precision.py            # gmm16d-vp, one torch thread; about a minute
    python benchmarks/mixed_precision.py --docs     # also writes docs/data/mixed_precision.md
"""

from __future__ import annotations

import argparse
import math
import os

import torch

import scoresde
from scoresde._utils import atomic_write_text
from scoresde.bench.problems import mixture
from scoresde.metrics import noise_floor, sliced_wasserstein

torch.set_num_threads(1)
SAMPLERS = [("dpmpp_2m", 20), ("unipc", 10), ("heun", 17), ("ddim", 50), ("euler_maruyama", 200)]
NETS = [("float64", torch.float64), ("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)]


class LowPrecisionEps(torch.nn.Module):
    """The exact eps of ``gm`` as a network of parameter dtype ``dtype`` (inputs and output in it)."""

    def __init__(self, gm, sde, dtype):
        super().__init__()
        self.gm, self.sde = gm, sde
        self.tag = torch.nn.Parameter(torch.zeros(1, dtype=dtype), requires_grad=False)

    def forward(self, x, c_noise):
        t = c_noise.to(torch.float64)  # the rounded time the network received
        s = self.sde.sigma(t)[:, None]
        eps = -s * self.gm.score(x.to(torch.float64), t, self.sde)
        return eps.to(self.tag.dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", default="gmm16d")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--docs", action="store_true")
    args = ap.parse_args(argv)
    gm, sde = mixture(args.problem), scoresde.VPSDE()
    ref = gm.sample(args.n, generator=torch.Generator().manual_seed(1))
    floor = noise_floor(sliced_wasserstein, gm, args.n, repeats=5).rms
    seeds = torch.arange(args.n)
    rows = ["| sampler | steps | network dtype | pathwise rms vs float64 | SW2 / floor |", "|---|---:|---|---:|---:|"]
    for name, steps in SAMPLERS:
        runs = {}
        for label, dt in NETS:
            model = scoresde.ScoreModel(LowPrecisionEps(gm, sde, dt), sde, "eps")
            state = torch.float64 if dt == torch.float64 else torch.float32
            runs[label] = scoresde.sample(model, sde, (args.n, gm.dim), name, steps, seeds=seeds, dtype=state).x.double()
        for label, _ in NETS:
            x = runs[label]
            err = float(((x - runs["float64"]).pow(2).sum(1) / gm.dim).mean().sqrt())
            sw = sliced_wasserstein(x, ref) / floor
            bad = "" if bool(torch.isfinite(x).all()) else " (non-finite)"
            rows.append(f"| `{name}` | {steps} | {label} | {err:.2e}{bad} | {sw:.2f} |")
            print(rows[-1], flush=True)
    text = (f"Mixed precision on `{args.problem}-vp` (n = {args.n}, exact eps as a network in each dtype; the sampler "
            f"state in float32, float64 for the float64 row; one torch thread). Command: "
            f"`python benchmarks/mixed_precision.py --docs`.\n\n" + "\n".join(rows) + "\n")
    if args.docs:
        atomic_write_text(os.path.join(os.path.dirname(__file__), "..", "docs", "data", "mixed_precision.md"), text)
    print(f"\nfloor SW2 rms {floor:.4f}; {math.nan if not rows else len(rows) - 2} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
