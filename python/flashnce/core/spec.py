"""The tile contract's three axes, defined once: epilogue kinds, statistics and relations.

Every loss is a reduction over the pairwise logits

    l_ij = scale * h_kind(p_ij = <x_i, y_j>, alpha_i, beta_j; c) + bias

that a backend walks tile by tile without storing. Three independent choices describe a call:

* **kind** -- the geometry epilogue h (``KINDS``; per-row scalar counts in
  ``NUM_ROW_SCALARS``). The math lives in ``flashnce.geometry`` (torch spec),
  ``csrc/flashnce/geometry.h`` (CPU + CUDA) and ``triton_kernels/epilogue.py``.
* **stat** -- what a tile is folded into (``STATS``): per-row / per-column state, how two
  partial states merge, and the upstream rule G_ij = dL/dl_ij for the backward.
* **relation** -- the role of each pair (i, j): *skip* (not part of the statistic),
  *positive* or *negative* (``RELATIONS``). It travels as a few small index tensors and
  an options vector, never as an N x M mask.

This module imports nothing (not even torch): ``csrc/flashnce/spec.h`` mirrors it and a test
checks the two agree; the Triton kernels import their constants from here. Indices are part of
the compiled ops' ABI: append, never renumber.

Compiled op family (one schema for the C++ CPU / CUDA ops ``flashnce::tile_fwd/tile_bwd`` and
the Triton ops ``flashnce::triton_tile_fwd/triton_tile_bwd``)::

    tile_fwd(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor theta, Tensor[] relation,
             int[] options, float kappa) -> (Tensor row_stat, Tensor col_stat)
    tile_bwd(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor theta, Tensor[] relation,
             int[] options, float kappa, Tensor row_stat, Tensor col_stat, Tensor g_row,
             Tensor g_col) -> (Tensor dx, Tensor dy, Tensor d_alpha, Tensor d_beta,
                               Tensor d_theta)
    tile_fwd_grad(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor theta,
                  Tensor[] relation, int[] options, float kappa)
        -> (Tensor row_stat, Tensor col_stat, Tensor dx, Tensor dy, Tensor d_alpha,
            Tensor d_beta, Tensor d_theta)

``tile_fwd_grad`` (``triton_tile_fwd_grad``) is the one-pass forward of a stat whose G depends
on the pair alone (``STAT_INFO[stat]["local_grad"]``): the stats of ``tile_fwd`` and, from the
same walk, the gradients ``tile_bwd`` would return for g_row = 1, g_col = 0 (the gradient of
sum_i row_stat[i]). The caller scales them by its scalar upstream gradient. A stat without a
local G (``lse``) is refused.

* x [N, K], y [M, K]: fp32 / fp64 / bf16 / fp16, same dtype, contiguous (the GEMM operands).
* alpha [N, r], beta [M, r]: per-row scalars, r = NUM_ROW_SCALARS[kind], compute dtype
  (fp64 for fp64 inputs, else fp32).
* theta [3], compute dtype: THETA_SCALE, THETA_INV_SQRT_C (k = 1/sqrt(c)), THETA_BIAS.
* relation: the relation's index tensors, all int64 and contiguous (``RELATION_TENSORS``).
* options [NUM_OPTIONS]: OPT_KIND, OPT_STAT, OPT_RELATION, OPT_FLAGS, OPT_DIAG_OFFSET,
  OPT_COLS_BOTH (see below).
* kappa: the distance clamp constant (``flashnce.core.numerics.clamp_kappa``).
* row_stat [N], col_stat [M0] (M0 = options[OPT_COLS_BOTH]) in the compute dtype, and the
  upstream gradients g_row [N], g_col [M0] (zeros where the caller has none).
* dX, dY in the input dtype, freshly allocated, aliasing nothing (``flashnce.features`` adds
  into them in place; with FLAG_SAME_OPERAND dX is dX + dY and dY is empty [0, K]);
  d_alpha [N, r], d_beta [M, r], d_theta [3] in the compute dtype with
  d_theta = (sum G h, scale * sum G h / k for the hyperbolic kind else 0, sum G).

Relations (pair roles; precedence skip > positive > negative):

* ``none``      -- no positives.
* ``diagonal``  -- (i, j) is positive iff j == i + diag_offset.
* ``targets``   -- relation = [t [N]]: (i, j) positive iff j == t_i.
* ``labels``    -- relation = [a [N], b [M]]: (i, j) positive iff a_i == b_j.
* ``csr``       -- relation = [indptr [N+1], indices [nnz], roles [nnz],
                   t_indptr [M+1], t_indices [nnz], t_roles [nnz]]: row i lists its columns
                   indices[indptr[i]:indptr[i+1]] (strictly increasing) with a role each
                   (ROLE_SKIP or ROLE_POSITIVE); columns not listed are negatives. The t_*
                   tensors are the same sets transposed (per column, rows strictly
                   increasing), for walks that visit columns as rows.

Flags (options[OPT_FLAGS], bit set), applied on top of any relation:

* FLAG_SKIP_SELF       -- (i, j) is skipped iff j == i + diag_offset (same-set losses; in
                          distributed runs diag_offset is the global offset of the column
                          block relative to the row block).
* FLAG_SKIP_POSITIVES  -- the relation's positives are skipped (e.g. a margin loss adds its
                          positive analytically).

Backward mode flag (options[OPT_FLAGS], bit FLAG_SAME_OPERAND; not a relation flag, so not in
ALL_FLAGS, and a backend honours it only where ``supports_same_operand``, backends/base.py):

* FLAG_SAME_OPERAND    -- y is x: the same operand (M = N, same values), as in the same-set
                          losses that walk a batch against itself. The statistics are
                          unchanged (the forward ignores the bit); ``tile_bwd`` /
                          ``tile_fwd_grad`` return dX + dY (the whole gradient of the shared
                          operand) as dX and an empty dY [0, K], so only one N x K gradient
                          exists. alpha and beta stay separate operands with separate
                          gradients (they may differ). The caller vouches that y is x
                          (``flashnce.core.autograd.same_operand``); the CPU kernel checks
                          the shapes only, and reads x for y.

Row-only columns: options[OPT_COLS_BOTH] = M0 <= M. Columns j >= M0 are seen only by rows:
they enter row statistics, have no column statistic (col_stat and g_col have M0 entries),
and their G comes from the row side alone (MoCo queues, extra hard negatives).

Statistic ``lse`` (the first instance; the walk is generic over the stat):

* forward: row_stat[i] = log sum_{j not skipped} exp l_ij, col_stat[j] = log sum_{i not
  skipped} exp l_ij (j < M0); -inf for a row / column with every pair skipped.
* merge of two partial states: logaddexp.
* backward: G_ij = g_row[i] exp(l_ij - row_stat[i]) + g_col[j] exp(l_ij - col_stat[j])
  (second term only for j < M0), and G_ij = 0 exactly on skipped pairs.

Statistic ``pair_sum`` (the sigmoid family; no normaliser, so G is local to the pair):

* z_ij = +1 for the relation's positives, -1 for negatives; f(l, z) = softplus(-z l)
  = -log sigmoid(z l), evaluated as max(u, 0) + log1p(exp(-|u|)) with u = -z l.
* forward: row_stat[i] = sum_{j not skipped} f(l_ij, z_ij), col_stat[j] = sum_{i not
  skipped} f(l_ij, z_ij) (j < M0); 0 for a row / column with every pair skipped.
* merge: +.
* backward: G_ij = (g_row[i] + g_col[j]) f'(l_ij, z_ij), f'(l, z) = -z sigmoid(-z l)
  (g_col term only for j < M0), G_ij = 0 exactly on skipped pairs. ``tile_fwd_grad`` gives
  the g_row = 1, g_col = 0 gradients in the forward walk.

Statistic ``masked_sum`` (SupCon, multi-positive InfoNCE: the lse and the sum of the
positives' logits, from the same walk and the same arithmetic). Its state is two values per
row (``state_width`` 2): row_stat [N, 2], col_stat [M0, 2], g_row [N, 2], g_col [M0, 2], all
contiguous in the compute dtype, value 0 = the lse, value 1 = the masked sum:

* forward: row_stat[i, 0] = log sum_{j not skipped} exp l_ij (exactly lse's, -inf when empty),
  row_stat[i, 1] = sum_{j positive} l_ij (0 when the row has no positive); col_stat[j, :]
  likewise over i for j < M0. Positives are pairs of the relation's positive role that are
  not skipped (so they are inside the lse too). The count |P(i)| is not part of the state:
  callers compute it in O(N) from the relation.
* merge: (logaddexp, +).
* backward: G_ij = g_row[i, 0] exp(l_ij - row_stat[i, 0]) + g_row[i, 1] [ij positive]
  + g_col[j, 0] exp(l_ij - col_stat[j, 0]) + g_col[j, 1] [ij positive] (column terms only for
  j < M0), G = 0 exactly on skipped pairs. No one-pass op (the lse part of G needs the
  finished rows).

Statistic ``count`` (retrieval ranks; forward only, no backward, no one-pass op). P(i) = the
pairs of row i of the positive role that are not skipped, N(i) = its negatives (neither
skipped nor positive):

* tau_i = max_{j in P(i)} l_ij (the best positive), t_i = the smallest j in P(i) with
  l_ij == tau_i;
* row_stat[i] = #{j in N(i): l_ij > tau_i} + #{j in N(i): j < t_i, l_ij == tau_i} (the
  0-based rank of the best positive; ties with it are broken by column index), as a number
  in the compute dtype (exact below 2**24 in fp32: backends refuse N or M >= 2**24 there);
  -1 for a row without any positive;
* col_stat[j] (j < M0): the same rule on column j, over rows i (tau_j, s_j = the smallest
  row attaining it); row-only columns j >= M0 take part in the row counts only.

Exactness: tau_i must come from the same arithmetic as the l_ij it is compared with, so the
op finds the thresholds itself, on the same tile grid as its count: phase 1 walks the tiles
holding positives (max and smallest index per row and column), phase 2 walks every tile and
counts. The state is final only at the end of both phases: there is no partial-state merge
(``merge`` None).
"""

# --- kinds: index = the compiled kernels' kind id ---------------------------------------------
KINDS = ("dot", "sqeuclidean", "euclidean", "hyperbolic", "cosine")
NUM_ROW_SCALARS = {"dot": 0, "sqeuclidean": 1, "euclidean": 1, "hyperbolic": 3, "cosine": 1}
MAX_ROW_SCALARS = 3

# --- stats ------------------------------------------------------------------------------------
STATS = ("lse", "pair_sum", "masked_sum", "count")
# Per stat: how two partial states of one row merge ("logaddexp" / "sum"; a tuple per value for
# a state of several values), the value of a row that has seen no pair, whether it has a
# backward, the number of values per row of its state (1: row_stat [N]; w > 1: [N, w]), and
# whether G_ij depends on the pair alone (then ``tile_fwd_grad`` exists for it).
STAT_INFO = {
    "lse": dict(merge="logaddexp", empty=float("-inf"), has_backward=True, state_width=1,
                local_grad=False),
    "pair_sum": dict(merge="sum", empty=0.0, has_backward=True, state_width=1,
                     local_grad=True),
    "masked_sum": dict(merge=("logaddexp", "sum"), empty=(float("-inf"), 0.0),
                       has_backward=True, state_width=2, local_grad=False),
    "count": dict(merge=None, empty=-1.0, has_backward=False, state_width=1,
                  local_grad=False),
}
# Largest N or M for which every rank of ``count`` is an exact integer in fp32 (bf16 / fp16
# inputs count in fp32 too); fp64 state is exact far beyond any batch.
COUNT_EXACT_FP32 = 2**24


def state_shape(stat: str, n: int) -> tuple:
    """The shape of n rows' state (and of their upstream gradient): (n,) or (n, width)."""
    w = STAT_INFO[stat]["state_width"]
    return (n,) if w == 1 else (n, w)

# --- relations --------------------------------------------------------------------------------
RELATIONS = ("none", "diagonal", "targets", "labels", "csr")
# The index tensors each relation carries, in order (all int64).
RELATION_TENSORS = {
    "none": (),
    "diagonal": (),
    "targets": ("targets",),
    "labels": ("row_labels", "col_labels"),
    "csr": ("indptr", "indices", "roles", "t_indptr", "t_indices", "t_roles"),
}
ROLE_SKIP = 0
ROLE_POSITIVE = 1

FLAG_SKIP_SELF = 1
FLAG_SKIP_POSITIVES = 2
ALL_FLAGS = FLAG_SKIP_SELF | FLAG_SKIP_POSITIVES  # the relation flags
FLAG_SAME_OPERAND = 4  # backward mode: dX + dY returned as dX, dY empty (see above)

# --- options vector layout --------------------------------------------------------------------
OPT_KIND = 0
OPT_STAT = 1
OPT_RELATION = 2
OPT_FLAGS = 3
OPT_DIAG_OFFSET = 4
OPT_COLS_BOTH = 5
NUM_OPTIONS = 6

# --- theta layout -----------------------------------------------------------------------------
THETA_SCALE = 0
THETA_INV_SQRT_C = 1
THETA_BIAS = 2
NUM_THETA = 3


def kind_id(kind: str) -> int:
    if kind not in KINDS:
        raise ValueError(f"unknown epilogue kind {kind!r} (known: {', '.join(KINDS)})")
    return KINDS.index(kind)


def stat_id(stat: str) -> int:
    if stat not in STATS:
        raise ValueError(f"unknown statistic {stat!r} (known: {', '.join(STATS)})")
    return STATS.index(stat)


def relation_id(relation: str) -> int:
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r} (known: {', '.join(RELATIONS)})")
    return RELATIONS.index(relation)
