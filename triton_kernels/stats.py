"""Statistics in-kernel: what a walk folds a logit tile into, and its upstream rule G.

Selected at compile time by ``STAT: tl.constexpr`` (ids from ``flashnce.core.spec.STATS``).
Every helper works on base-2 logits l2 = l * log2(e) (exp2 is the fast path) and on
per-row states of three fp32 [BLOCK_A] vectors (s2 is used by masked_sum only; for the other
stats it is a constant zero that the compiler drops); ``keep`` is the tile's kept pairs and
``pos`` its positives (``relation.tile_roles``), read only by stats that need the role and only
when ``POSITIVES`` (the launcher's flag: some kept pair can be positive; else every kept pair
is a negative and ``pos`` is not a mask to read):

    stat_init(BLOCK_A)                  the empty state
    stat_fold(s0, s1, s2, l2, keep, pos)
                                        fold one [BLOCK_A, BLOCK_B] tile, only where ``keep``
    stat_store(OUT, idx64, ok, s0, s1, s2)
                                        store the finished statistic of rows ``idx64``
                                        (natural units; ``state_width`` values per row)
    stat_finalize(s0, s1)               the saved statistic [BLOCK_A] of a one-value stat
    stat_saved(ST, idx64, has)          a saved statistic loaded for the backward, in base 2
    stat_upstream(G, idx64, has)        the upstream gradient (g0, g1) of rows ``idx64``
    stat_grad(l2, keep, pos, ...)       G = dL/dl of the tile from both sides' saved statistics
    stat_fold_grad(s0, s1, s2, l2, keep, pos)
                                        stats with a local G (``STAT_INFO[..]["local_grad"]``):
                                        the fold and G for g = 1 from one evaluation

``lse``: s0 = running max m, s1 = running sum s of exp2(l2 - m) (online softmax, base 2);
stat = (m + log2 s) ln 2, -inf when nothing was kept;
G = g_a exp(l - st_a) + g_b exp(l - st_b), 0 where not kept.

``pair_sum``: s0 = running sum of f = softplus(u), u = -z l (z = +1 on positives, -1 on
negatives), s1 unused; stat = s0, 0 when nothing was kept. f = max(u, 0) + log1p(e) and
f' = -z sigmoid(u), sigmoid(u) = 1/(1+e) (u >= 0) or e/(1+e) (u < 0), both from the one
e = exp(-|u|) = exp2(-|u2|) (no overflow, no cancellation); G = (g_a + g_b) f', 0 where not
kept (a select, so an inf in a skipped lane never leaks). No saved statistic is read.

``masked_sum``: s0, s1 = lse's (m, s), s2 = running sum of l2 over the kept positives (only
with ``POSITIVES``; else it stays 0); stored as two values per row, OUT[2i] = lse's
statistic, OUT[2i + 1] = s2 ln 2. G = g_a0 exp(l - st_a) + g_b0 exp(l - st_b) + (g_a1 + g_b1)
on positives, 0 where not kept (st = the saved lse, value 0 of each row's pair).
"""

import triton
import triton.language as tl

from flashnce.core import spec

from .epilogue import _log1p

STAT_LSE = tl.constexpr(spec.stat_id("lse"))
STAT_PAIR_SUM = tl.constexpr(spec.stat_id("pair_sum"))
STAT_MASKED_SUM = tl.constexpr(spec.stat_id("masked_sum"))
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _pair_terms(l2, pos, POSITIVES: tl.constexpr):
    """pair_sum per pair: (u2 = -z l2, e = exp(-|u|) = exp2(-|u2|))."""
    if POSITIVES:
        u2 = tl.where(pos, -l2, l2)
    else:  # every kept pair is a negative (z = -1)
        u2 = l2
    e = tl.exp2(-tl.abs(u2))
    return u2, e


@triton.jit
def _pair_value(u2, e):
    """f = softplus(u) = max(u, 0) + log1p(exp(-|u|)) (natural units)."""
    return tl.maximum(u2, 0.0) * LN2 + _log1p(e)


@triton.jit
def _pair_slope(u2, e, pos, POSITIVES: tl.constexpr):
    """f' = df/dl = -z sigmoid(u)."""
    r = 1.0 / (1.0 + e)
    sig = tl.where(u2 >= 0.0, r, e * r)
    if POSITIVES:
        sig = tl.where(pos, -sig, sig)
    return sig


@triton.jit
def stat_init(BLOCK_A: tl.constexpr, STAT: tl.constexpr):
    if STAT == STAT_LSE or STAT == STAT_MASKED_SUM:
        s0 = tl.full((BLOCK_A,), float("-inf"), tl.float32)
    else:
        tl.static_assert(STAT == STAT_PAIR_SUM)
        s0 = tl.zeros((BLOCK_A,), tl.float32)
    s1 = tl.zeros((BLOCK_A,), tl.float32)
    s2 = tl.zeros((BLOCK_A,), tl.float32)
    return s0, s1, s2


@triton.jit
def _lse_fold(s0, s1, l2, keep):
    """Online softmax in base 2: (m, s) after one tile of kept logits."""
    l2 = tl.where(keep, l2, float("-inf"))
    m_new = tl.maximum(s0, tl.max(l2, 1))
    # A row whose kept entries so far are all -inf keeps m = -inf; shift by 0 there so
    # exp2(-inf - (-inf)) = nan never appears.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s1 = s1 * tl.exp2(s0 - m_safe) + tl.sum(tl.exp2(l2 - m_safe[:, None]), 1)
    return m_new, s1


@triton.jit
def _lse_finalize(s0, s1):
    # Nothing kept (or a padded row): -inf, without evaluating log2(0).
    return tl.where(s1 > 0.0, (s0 + tl.log2(tl.where(s1 > 0.0, s1, 1.0))) * LN2,
                    float("-inf"))


@triton.jit
def stat_fold(s0, s1, s2, l2, keep, pos, STAT: tl.constexpr, POSITIVES: tl.constexpr):
    if STAT == STAT_LSE:
        s0, s1 = _lse_fold(s0, s1, l2, keep)
    elif STAT == STAT_MASKED_SUM:
        if POSITIVES:
            # Kept positives only (skip wins); from l2 before the lse's -inf masking.
            s2 += tl.sum(tl.where(keep & pos, l2, 0.0), 1)
        s0, s1 = _lse_fold(s0, s1, l2, keep)
    else:
        tl.static_assert(STAT == STAT_PAIR_SUM)
        u2, e = _pair_terms(l2, pos, POSITIVES)
        s0 += tl.sum(tl.where(keep, _pair_value(u2, e), 0.0), 1)
    return s0, s1, s2


@triton.jit
def stat_finalize(s0, s1, STAT: tl.constexpr):
    """The statistic of a one-value stat (masked_sum stores two: ``stat_store``)."""
    if STAT == STAT_LSE:
        out = _lse_finalize(s0, s1)
    else:
        tl.static_assert(STAT == STAT_PAIR_SUM)
        out = s0
    return out


@triton.jit
def stat_store(OUT, idx64, ok, s0, s1, s2, STAT: tl.constexpr):
    """OUT[idx64] = the statistic (one value per row), or for masked_sum the row pair
    OUT[2 idx64] = lse, OUT[2 idx64 + 1] = masked sum ([n, 2] row-major)."""
    if STAT == STAT_MASKED_SUM:
        tl.store(OUT + 2 * idx64, _lse_finalize(s0, s1), mask=ok)
        tl.store(OUT + 2 * idx64 + 1, s2 * LN2, mask=ok)
    else:
        tl.store(OUT + idx64, stat_finalize(s0, s1, STAT), mask=ok)


@triton.jit
def stat_saved(ST, idx64, has, STAT: tl.constexpr):
    """Saved statistics of ``idx64`` in base 2. Entries without a statistic (padded, or
    row-only columns seen from the column side) read +inf, so their term exp2(l2 - inf) = 0
    and g * 0 = 0 even where exp2(l2) alone would overflow. pair_sum reads none (its G is
    local): zeros, no load. masked_sum reads its lse (value 0 of each row's pair)."""
    if STAT == STAT_LSE:
        st = tl.load(ST + idx64, mask=has, other=float("inf")) * LOG2E
    elif STAT == STAT_MASKED_SUM:
        st = tl.load(ST + 2 * idx64, mask=has, other=float("inf")) * LOG2E
    else:
        tl.static_assert(STAT == STAT_PAIR_SUM)
        st = tl.zeros(idx64.shape, tl.float32)
    return st


@triton.jit
def stat_upstream(G, idx64, has, STAT: tl.constexpr):
    """The upstream gradient of rows ``idx64``: (g0, g1), 0 where ``has`` is false. One-value
    stats: g0 = G[idx64], g1 = 0 (unused); masked_sum: the pair (G[2 idx64], G[2 idx64 + 1])
    of the lse and the masked sum."""
    if STAT == STAT_MASKED_SUM:
        g0 = tl.load(G + 2 * idx64, mask=has, other=0.0)
        g1 = tl.load(G + 2 * idx64 + 1, mask=has, other=0.0)
    else:
        g0 = tl.load(G + idx64, mask=has, other=0.0)
        g1 = tl.zeros(idx64.shape, tl.float32)
    return g0, g1


@triton.jit
def stat_grad(l2, keep, pos, st_a, g_a, g_a1, st_b, g_b, g_b1, STAT: tl.constexpr,
              POSITIVES: tl.constexpr):
    """G of a tile: st_a, g_a, g_a1 are [BLOCK_A, 1] (this program's rows), st_b, g_b, g_b1
    [1, BLOCK_B] (the walked columns), statistics from ``stat_saved`` and upstream gradients
    from ``stat_upstream``; g is 0 where a side has none. g_a1, g_b1 are read by masked_sum
    only."""
    if STAT == STAT_LSE:
        # Skipped pairs of a fully skipped row have st_a = -inf, so exp2 = inf there: where()
        # selects (never multiplies) them away.
        g = tl.where(keep, g_a * tl.exp2(l2 - st_a) + g_b * tl.exp2(l2 - st_b), 0.0)
    elif STAT == STAT_MASKED_SUM:
        g = g_a * tl.exp2(l2 - st_a) + g_b * tl.exp2(l2 - st_b)
        if POSITIVES:
            g += tl.where(pos, g_a1 + g_b1, 0.0)
        g = tl.where(keep, g, 0.0)
    else:
        tl.static_assert(STAT == STAT_PAIR_SUM)
        u2, e = _pair_terms(l2, pos, POSITIVES)
        g = tl.where(keep, (g_a + g_b) * _pair_slope(u2, e, pos, POSITIVES), 0.0)
    return g


@triton.jit
def stat_fold_grad(s0, s1, s2, l2, keep, pos, STAT: tl.constexpr, POSITIVES: tl.constexpr):
    """The fold of ``stat_fold`` and G for unit upstream gradients on this side only, from one
    evaluation per pair; only for stats whose G is local to the pair (lse and masked_sum are
    refused)."""
    tl.static_assert(STAT == STAT_PAIR_SUM)
    u2, e = _pair_terms(l2, pos, POSITIVES)
    s0 += tl.sum(tl.where(keep, _pair_value(u2, e), 0.0), 1)
    g = tl.where(keep, _pair_slope(u2, e, pos, POSITIVES), 0.0)
    return s0, s1, s2, g
