"""Geometry epilogues as ``@triton.jit`` helper pairs, shared by every kernel.

Mirrors ``flashnce.geometry.tile_logits`` / ``tile_logit_grads`` (the executable spec) for the
five epilogue kinds, selected at compile time by ``KIND: tl.constexpr`` (ids from
``flashnce.core.spec.KINDS``):

    KIND_DOT          h = p
    KIND_SQEUCLIDEAN  h = -(a_i + b_j - 2p)
    KIND_EUCLIDEAN    h = -sqrt(max(D, kappa (a_i + b_j)))             D = a_i + b_j - 2p
    KIND_HYPERBOLIC   h = -arcosh(1 + w) / sqrt(c),  w = 2 sinh^2((rho_i - rho_j)/2)
                                                         + S_i S_j (1 - p / (n_i n_j))
    KIND_COSINE       h = p / (n_i n_j)                                  a0 = n = |x|

Per-row scalars arrive as broadcastable fields: ``a0, a1, a2`` are [BA, 1] (this program's
rows), ``b0, b1, b2`` are [1, BB] (the walked columns); kinds that read fewer scalars ignore
the rest. Every h is symmetric under swapping (x, alpha) with (y, beta), which is why the
kernels compute column statistics and dY by relaunching the row kernels on swapped operands;
the gradient helper therefore only returns the row-side partials.

All math is fp32. Clamped entries (euclidean D <= kappa (a + b), hyperbolic w <= kappa S_i S_j)
take the floor value and get exactly zero gradient (strict masks).

Hyperbolic range: q = sqrt(w (w + 2)) is formed as w + 1 once w > 2^27 (``_hyperbolic_q``), so
nothing overflows while w + q ~ 2 w does: S_i S_j (1 - cos) <= 2 S_i S_j stays below
fp32's max for radii up to ~44 (sinh(44)^2 = 4.1e37), and sinh((rho_i - rho_j) / 2) and
sinh(rho_i - rho_j) are at most sinh(44) = 6.4e18.
"""

import triton
import triton.language as tl

from flashnce.core import spec

# Kind ids from the one table; tl.constexpr so that compiled kernels may read them (a plain
# module global is refused by the compiler, though the interpreter accepts it).
KIND_DOT = tl.constexpr(spec.kind_id("dot"))
KIND_SQEUCLIDEAN = tl.constexpr(spec.kind_id("sqeuclidean"))
KIND_EUCLIDEAN = tl.constexpr(spec.kind_id("euclidean"))
KIND_HYPERBOLIC = tl.constexpr(spec.kind_id("hyperbolic"))
KIND_COSINE = tl.constexpr(spec.kind_id("cosine"))


@triton.jit
def _log1p(x):
    # Kahan's trick (Goldberg 1991, thm. 4): exact at u == 1, 1-ulp elsewhere; needs no libdevice.
    u = 1.0 + x
    d = u - 1.0
    return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _expm1(x):
    # Same trick for expm1 (Kahan); exp overflow to inf stays inf.
    u = tl.exp(x)
    d = u - 1.0
    ok = (d != 0.0) & (u != float("inf"))
    lu = tl.log(tl.where(ok, u, 2.0))
    return tl.where(d == 0.0, x, tl.where(u == float("inf"), u, d * (x / tl.where(ok, lu, 1.0))))


@triton.jit
def _sinh(x):
    # sinh |x| = (e - 1/e) / 2 = expm1(|x|) (1 + 1/e) / 2: no cancellation for small |x|, and
    # e = expm1 + 1 >= 1 is exact enough (for x < 0, expm1(x) + 1 would cancel: at x = -11 it
    # loses ~0.2%, and it is 0, so sinh = inf, from x ~ -17). sinh is odd.
    ax = tl.abs(x)
    em = _expm1(ax)
    s = 0.5 * em * (1.0 + 1.0 / (em + 1.0))
    return tl.where(x < 0.0, -s, s)


# Past w = 2^27, sqrt(w (w + 2)) = (w + 1) sqrt(1 - 1/(w + 1)^2) rounds to w + 1 in fp32 (the
# relative difference 1/(2 (w + 1)^2) is below eps), while w (w + 2) overflows from w ~ 1.8e19.
Q_LINEAR = tl.constexpr(134217728.0)  # 2^27


@triton.jit
def _hyperbolic_q(w):
    """q = sqrt(w (w + 2)) for w >= 0, without overflow (w + 1 past 2^27)."""
    return tl.where(w > Q_LINEAR, w + 1.0, tl.sqrt(w * (w + 2.0)))


@triton.jit
def _hyperbolic_w(p, a0, a1, a2, b0, b1, b2):
    """w = z - 1 by the hyperbolic law of cosines, S_i S_j and the cosine (never forms z)."""
    cos = p / (a0 * b0)
    ss = a2 * b2
    half = _sinh(0.5 * (a1 - b1))
    w = 2.0 * half * half + ss * (1.0 - cos)
    return w, ss, cos


@triton.jit
def epilogue_h(p, a0, a1, a2, b0, b1, b2, inv_sqrt_c, KIND: tl.constexpr, KAPPA: tl.constexpr):
    """Scale-free logit h(p_ij, alpha_i, beta_j) of a [BA, BB] fp32 tile."""
    if KIND == KIND_DOT:
        h = p
    elif KIND == KIND_SQEUCLIDEAN:
        h = 2.0 * p - (a0 + b0)
    elif KIND == KIND_EUCLIDEAN:
        dist2 = (a0 + b0) - 2.0 * p
        floor = KAPPA * (a0 + b0)
        h = -tl.sqrt(tl.where(dist2 > floor, dist2, floor))
    elif KIND == KIND_COSINE:
        h = p / (a0 * b0)
    else:  # KIND_HYPERBOLIC
        w, ss, cos = _hyperbolic_w(p, a0, a1, a2, b0, b1, b2)
        floor = KAPPA * ss
        w = tl.where(w > floor, w, floor)
        # arcosh(1 + w) = log1p(w + sqrt(w (w + 2))): no cancellation near w = 0.
        h = -_log1p(w + _hyperbolic_q(w)) * inv_sqrt_c
    return h


@triton.jit
def epilogue_grad(p, a0, a1, a2, b0, b1, b2, scale, inv_sqrt_c, g,
                  KIND: tl.constexpr, KAPPA: tl.constexpr):
    """Contract an upstream tile g = dL/dlogit with the epilogue's row-side partials.

    Returns tiles (g_p, t0, t1, t2): g_p = g dlogit/dp feeds the gradient GEMM, and
    sum over axis 1 of t_k is d alpha_k for this program's rows. ``g`` must already be zero
    on masked / out-of-range entries; every returned tile is then zero there too.
    """
    gs = g * scale
    zero = tl.zeros_like(gs)
    if KIND == KIND_DOT:
        g_p = gs
        t0 = zero
        t1 = zero
        t2 = zero
    elif KIND == KIND_SQEUCLIDEAN:
        g_p = 2.0 * gs
        t0 = -gs
        t1 = zero
        t2 = zero
    elif KIND == KIND_EUCLIDEAN:
        dist2 = (a0 + b0) - 2.0 * p
        active = dist2 > KAPPA * (a0 + b0)
        # dh/dD = -1 / (2 d); zero where clamped, never 0 * inf.
        g_d = tl.where(active, -0.5 * gs / tl.sqrt(tl.where(active, dist2, 1.0)), 0.0)
        g_p = -2.0 * g_d
        t0 = g_d
        t1 = zero
        t2 = zero
    elif KIND == KIND_COSINE:
        # dh/dp = 1/(n_i n_j); dh/dn_i = -h/n_i.
        g_p = gs / (a0 * b0)
        t0 = -g_p * p / a0
        t1 = zero
        t2 = zero
    else:  # KIND_HYPERBOLIC
        w, ss, cos = _hyperbolic_w(p, a0, a1, a2, b0, b1, b2)
        active = w > KAPPA * ss
        q = _hyperbolic_q(tl.where(active, w, 1.0))  # clamped entries: no nan, even unused
        # g_w = g dlogit/dw = -g s k / q on active entries only, never formed alone: at large
        # radii q ~ S_i S_j reaches 1e37 and g_w would be subnormal (flushed to 0 on the
        # GPU). r = 1 / q stays normal up to the largest cap (rho = 44), and every factor
        # multiplies r first (S_i S_j r ~ 1 / (1 - cos), sinh(rho_i - rho_j) r, S_j r).
        g_k = tl.where(active, -gs * inv_sqrt_c, 0.0)
        r = 1.0 / q
        g_ss = g_k * (ss * r)             # g_w S_i S_j
        g_p = -g_ss / (a0 * b0)
        t0 = g_ss * cos / a0              # dw/dn_i = S_i S_j cos / n_i
        t1 = g_k * (_sinh(a1 - b1) * r)   # dw/drho_i = sinh(rho_i - rho_j)
        t2 = g_k * (1.0 - cos) * (b2 * r)  # dw/dS_i = S_j (1 - cos)
    return g_p, t0, t1, t2


@triton.jit
def norm_grad_from_gp(g_p, p, a0, t0, KIND: tl.constexpr):
    """The first row-scalar partial re-derived from the (possibly rounded) g_p tile.

    The gradient GEMM consumes g_p rounded to the operand dtype; for the distance kinds the
    norm term must be built from the same values, because the two cancel in dx_i (the
    gradient of |x_i - y_j| is (x_i - y_j) / d, made of <g_p, y> and a_i's term). In exact
    arithmetic these equal ``t0`` of ``epilogue_grad``:
      sq/euclidean: dh/da = -dh/dp / 2;   hyperbolic, cosine: dn_i term = -g_p p / n_i.
    """
    if KIND == KIND_SQEUCLIDEAN or KIND == KIND_EUCLIDEAN:
        t0 = -0.5 * g_p
    elif KIND == KIND_HYPERBOLIC or KIND == KIND_COSINE:
        t0 = -g_p * p / a0
    return t0
