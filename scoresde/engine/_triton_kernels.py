"""Triton kernels of the fused engine (imported lazily by :mod:`scoresde.engine.fused`).

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, i.e. when this module is imported;
``INTERPRET`` records the setting it was built with.
"""

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    for _ in tl.static_range(10):
        m0 = tl.full(c0.shape, 0xD2511F53, tl.uint32)
        m1 = tl.full(c0.shape, 0xCD9E8D57, tl.uint32)
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + tl.full(c0.shape, 0x9E3779B9, tl.uint32)
        k1 = k1 + tl.full(c0.shape, 0xBB67AE85, tl.uint32)
    return c0, c1, c2, c3

@triton.jit
def _words(offs, n_per, SEEDS, draw):
    """The four Philox words of element offs (sample offs // n_per, element offs % n_per)."""
    b = offs // n_per
    j = offs - b * n_per
    s = tl.load(SEEDS + b)
    k0 = (s & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((s >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c0 = (j // 4).to(tl.uint32)
    zero = tl.zeros(c0.shape, tl.int64)
    c1 = ((zero + draw) & 0xFFFFFFFF).to(tl.uint32)
    c2 = (((zero + draw) >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c3 = tl.full(c0.shape, 0x5C0E5DE, tl.uint32)
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0, k1)
    return w0, w1, w2, w3, j % 4

@triton.jit
def _normal(offs, n_per, SEEDS, draw):
    """float64 standard normal of element offs: Box-Muller as philox_normal_reference."""
    w0, w1, w2, w3, lane = _words(offs, n_per, SEEDS, draw)
    wa = tl.where(lane < 2, w0, w2).to(tl.float64)
    wb = tl.where(lane < 2, w1, w3).to(tl.float64)
    ua = (wa + 0.5) * (1.0 / 4294967296.0)
    ub = (wb + 0.5) * (1.0 / 4294967296.0)
    rad = tl.sqrt(-2.0 * tl.log(ua))  # float64: IEEE-rounded (sqrt.rn.f64 on CUDA)
    ang = 6.283185307179586 * ub  # 2 * math.pi, as the reference's float
    return tl.where(lane % 2 == 0, rad * tl.cos(ang), rad * tl.sin(ang))

@triton.jit
def words_kernel(SEEDS, DRAW, OUT, N, n_per, draw_off, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    draw = tl.load(DRAW) + draw_off
    w0, w1, w2, w3, lane = _words(offs, n_per, SEEDS, draw)
    tl.store(OUT + offs * 4 + 0, w0.to(tl.int64), mask=mask)
    tl.store(OUT + offs * 4 + 1, w1.to(tl.int64), mask=mask)
    tl.store(OUT + offs * 4 + 2, w2.to(tl.int64), mask=mask)
    tl.store(OUT + offs * 4 + 3, w3.to(tl.int64), mask=mask)

@triton.jit
def normal_kernel(SEEDS, DRAW, OUT, N, n_per, draw_off, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    z = _normal(offs, n_per, SEEDS, tl.load(DRAW) + draw_off)
    tl.store(OUT + offs, z.to(OUT.dtype.element_ty), mask=mask)

@triton.jit
def _combo(Wa, x, u, h0, h1, h2, h3, z, K: tl.constexpr, ZW: tl.constexpr):
    ty = x.dtype
    v = tl.load(Wa).to(ty) * x + tl.load(Wa + 1).to(ty) * u + tl.load(Wa + 2).to(ty) * h0
    if K > 1:
        v += tl.load(Wa + 3).to(ty) * h1
    if K > 2:
        v += tl.load(Wa + 4).to(ty) * h2
    if K > 3:
        v += tl.load(Wa + 5).to(ty) * h3
    if ZW:
        v += tl.load(Wa + 2 + K).to(ty) * z
    return v

@triton.jit
def launch_kernel(R, OUT, Z, W, P, SEEDS, DRAW, FLAGS, N, n_per, draw_off, call,
                  K: tl.constexpr, PUSH: tl.constexpr, NA: tl.constexpr, T0: tl.constexpr, T1: tl.constexpr,
                  T2: tl.constexpr, ZMODE: tl.constexpr, CHECK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(R + offs, mask=mask, other=0.0)
    u = tl.load(R + N + offs, mask=mask, other=0.0)
    zero = tl.zeros_like(x)
    h0 = tl.load(R + 2 * N + offs, mask=mask, other=0.0)
    h1 = zero
    h2 = zero
    h3 = zero
    if K > 1:
        h1 = tl.load(R + 3 * N + offs, mask=mask, other=0.0)
    if K > 2:
        h2 = tl.load(R + 4 * N + offs, mask=mask, other=0.0)
    if K > 3:
        h3 = tl.load(R + 5 * N + offs, mask=mask, other=0.0)
    if PUSH >= 0:
        o = tl.load(OUT + offs, mask=mask, other=0.0).to(x.dtype)
        if CHECK:
            bad = ((o != o) | (tl.abs(o) == float("inf"))) & mask
            tl.atomic_add(FLAGS + call, tl.sum(bad.to(tl.int32), axis=0))
        src = x
        if PUSH == 1:
            src = u
        x0 = tl.load(P).to(x.dtype) * src + tl.load(P + 1).to(x.dtype) * o
        h3 = h2
        h2 = h1
        h1 = h0
        h0 = x0
    z = zero
    if ZMODE == 1:
        z = _normal(offs, n_per, SEEDS, tl.load(DRAW) + draw_off).to(x.dtype)
    if ZMODE == 2:
        z = tl.load(Z + offs, mask=mask, other=0.0).to(x.dtype)
    if NA > 0:
        v = _combo(W, x, u, h0, h1, h2, h3, z, K, ZMODE > 0)
        if T0 == 0:
            x = v
        else:
            u = v
    if NA > 1:
        v = _combo(W + (3 + K), x, u, h0, h1, h2, h3, z, K, ZMODE > 0)
        if T1 == 0:
            x = v
        else:
            u = v
    if NA > 2:
        v = _combo(W + 2 * (3 + K), x, u, h0, h1, h2, h3, z, K, ZMODE > 0)
        if T2 == 0:
            x = v
        else:
            u = v
    if (NA > 0 and T0 == 0) or (NA > 1 and T1 == 0) or (NA > 2 and T2 == 0):
        tl.store(R + offs, x, mask=mask)
    if (NA > 0 and T0 == 1) or (NA > 1 and T1 == 1) or (NA > 2 and T2 == 1):
        tl.store(R + N + offs, u, mask=mask)
    if PUSH >= 0:
        tl.store(R + 2 * N + offs, h0, mask=mask)
        if K > 1:
            tl.store(R + 3 * N + offs, h1, mask=mask)
        if K > 2:
            tl.store(R + 4 * N + offs, h2, mask=mask)
        if K > 3:
            tl.store(R + 5 * N + offs, h3, mask=mask)

