"""Statistics in-kernel: what a walk folds a logit tile into, and its upstream rule G.

Selected at compile time by ``STAT: tl.constexpr`` (ids from ``flashnce.core.spec.STATS``).
Every helper works on base-2 logits l2 = l * log2(e) (exp2 is the fast path) and on
per-row states of two fp32 [BLOCK_A] vectors:

    stat_init(BLOCK_A)            the empty state
    stat_fold(s0, s1, l2, keep)   fold one [BLOCK_A, BLOCK_B] tile, only where ``keep``
    stat_finalize(s0, s1)         the saved statistic [BLOCK_A] (natural units)
    stat_saved(ST, idx64, has)    a saved statistic loaded for the backward, in base 2
    stat_grad(l2, keep, ...)      G = dL/dl of the tile from both sides' saved statistics

``lse`` (the first instance): s0 = running max m, s1 = running sum s of exp2(l2 - m) (online
softmax, base 2); stat = (m + log2 s) ln 2, -inf when nothing was kept;
G = g_a exp(l - st_a) + g_b exp(l - st_b), 0 where not kept.
"""

import triton
import triton.language as tl

from flashnce.core import spec

STAT_LSE = tl.constexpr(spec.stat_id("lse"))
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def stat_init(BLOCK_A: tl.constexpr, STAT: tl.constexpr):
    tl.static_assert(STAT == STAT_LSE)
    s0 = tl.full((BLOCK_A,), float("-inf"), tl.float32)
    s1 = tl.zeros((BLOCK_A,), tl.float32)
    return s0, s1


@triton.jit
def stat_fold(s0, s1, l2, keep, STAT: tl.constexpr):
    tl.static_assert(STAT == STAT_LSE)
    l2 = tl.where(keep, l2, float("-inf"))
    m_new = tl.maximum(s0, tl.max(l2, 1))
    # A row whose kept entries so far are all -inf keeps m = -inf; shift by 0 there so
    # exp2(-inf - (-inf)) = nan never appears.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s1 = s1 * tl.exp2(s0 - m_safe) + tl.sum(tl.exp2(l2 - m_safe[:, None]), 1)
    return m_new, s1


@triton.jit
def stat_finalize(s0, s1, STAT: tl.constexpr):
    tl.static_assert(STAT == STAT_LSE)
    # Nothing kept (or a padded row): -inf, without evaluating log2(0).
    return tl.where(s1 > 0.0, (s0 + tl.log2(tl.where(s1 > 0.0, s1, 1.0))) * LN2,
                    float("-inf"))


@triton.jit
def stat_saved(ST, idx64, has, STAT: tl.constexpr):
    """Saved statistics of ``idx64`` in base 2. Entries without a statistic (padded, or
    row-only columns seen from the column side) read +inf, so their term exp2(l2 - inf) = 0
    and g * 0 = 0 even where exp2(l2) alone would overflow."""
    tl.static_assert(STAT == STAT_LSE)
    return tl.load(ST + idx64, mask=has, other=float("inf")) * LOG2E


@triton.jit
def stat_grad(l2, keep, st_a, g_a, st_b, g_b, STAT: tl.constexpr):
    """G of a tile: st_a, g_a are [BLOCK_A, 1] (this program's rows), st_b, g_b [1, BLOCK_B]
    (the walked columns), statistics from ``stat_saved``; g is 0 where a side has none."""
    tl.static_assert(STAT == STAT_LSE)
    # Skipped pairs of a fully skipped row have st_a = -inf, so exp2 = inf there: where()
    # selects (never multiplies) them away.
    return tl.where(keep, g_a * tl.exp2(l2 - st_a) + g_b * tl.exp2(l2 - st_b), 0.0)
