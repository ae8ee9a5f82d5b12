"""Where a sampler's own time goes: the pieces of one step, timed alone, and a cProfile of one run.

One torch thread, CPU time of the thread (``time.thread_time``), best of 5 repeats. Pieces: one
bare network call (randomly initialised MLP, 2-D, hidden 32, depth 2), one per-sample noise draw
(``PerSampleNoise``, ``torch.randn`` for scale), the ScoreModel wrapper around an identity network
(the call at a grid time ``ts[i]`` and at a loose time), and the top functions of a cProfile of
one 100-step eager run of each sampler named.

    python benchmarks/profile_sampler.py                                   # this checkout
    PYTHONPATH=/path/to/old/checkout python benchmarks/profile_sampler.py  # another one
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import scoresde
from scoresde import VPSDE, ScoreModel
from scoresde.nets import MLP
from scoresde.random import PerSampleNoise
from scoresde.samplers import get
from scoresde.schedules import make_grid


def best_us(fn, n: int) -> float:
    for _ in range(max(n // 10, 3)):
        fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time() - t0) / n)
    return best * 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--samplers", default="ddim,euler_ancestral")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    B = args.batch
    net = MLP(2, hidden=32, depth=2).eval()
    sde = VPSDE()
    x = torch.randn(B, 2)
    c = torch.full((B,), 0.5)
    ts = make_grid(sde, 100, "uniform")
    print(f"scoresde at {scoresde.__file__}; batch {B}; one thread; CPU time of the thread, best of 5")
    with torch.no_grad():
        print(f"bare MLP call (hidden 32, depth 2):        {best_us(lambda: net(x, c), 500):8.1f} us")
        noise = PerSampleNoise(torch.arange(B))
        print(f"PerSampleNoise draw of ({B}, 2):           {best_us(lambda: noise(x), 500):8.1f} us")
        print(f"torch.randn({B}, 2):                       {best_us(lambda: torch.randn(B, 2), 500):8.1f} us")
        ident = ScoreModel(lambda xx, cc: xx, sde, "eps")
        t_loose = torch.tensor(0.5, dtype=torch.float64)
        print(f"ScoreModel wrapper, t = ts[i] (+ .x0):     {best_us(lambda: ident(x, ts[7]).x0, 2000):8.1f} us")
        print(f"ScoreModel wrapper, loose t (+ .x0):       {best_us(lambda: ident(x, t_loose).x0, 2000):8.1f} us")
        model = ScoreModel(net, sde, "eps")
        for name in args.samplers.split(","):
            spec = get(name)
            grid = make_grid(sde, 100, spec.default_schedule)
            spec.fn(model, sde, x, grid, noise=PerSampleNoise(torch.arange(B)), callback=lambda i, xx: xx)
            pr = cProfile.Profile()
            pr.enable()
            spec.fn(model, sde, x, grid, noise=PerSampleNoise(torch.arange(B)), callback=lambda i, xx: xx)
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(args.top)
            body = s.getvalue()
            print(f"\ncProfile of one 100-step eager {name} run (by own time):")
            print(body[body.find("ncalls"):].rstrip())


if __name__ == "__main__":
    main()
