"""Relations in-kernel: which pairs of a [BLOCK_A, BLOCK_B] tile are skipped, and which are
positives.

Selected at compile time by ``RELATION: tl.constexpr`` (ids from ``flashnce.core.spec``) and
the flags ``SKIP_SELF`` / ``SKIP_POSITIVES``; the relation's index tensors arrive as three
int64 pointers R0, R1, R2 (unused ones may point anywhere). A pair is kept iff it is in bounds
and not skipped:

    SKIP_SELF                 skip j == i + off
    diagonal  (positives)     j == i + off
    targets   (positives)     j == t_i                R0 = t
    labels    (positives)     a_i == b_j              R0 = a, R1 = b
    csr       (listed pairs)  j in indices[indptr[i]:indptr[i+1]], with a role each
                              R0 = indptr, R1 = indices, R2 = roles
    SKIP_POSITIVES            positives are skipped as well (csr: every listed pair)

Swapped launches (rows are Y, columns are X: column statistics and dY) reuse this unchanged
with swapped inputs, chosen by the launcher: off -> -off, labels (a, b) -> (b, a), csr -> the
transposed t_* tensors. Only targets is not symmetric: there the test becomes t[col] == row,
hence the ``SWAPPED`` flag. With relation none and no flags nothing is added to the bounds
mask (every branch below is pruned at compile time).

``tile_keep`` gives the kept pairs only (all that lse needs). ``tile_roles`` gives (keep, pos)
for a stat that also reads the positive role (pair_sum's z, masked_sum's sum): with
``POSITIVES`` set (the launcher sets it only when a kept pair can be positive: a relation
with positives and no SKIP_POSITIVES), ``pos`` marks the relation's positives (meaningful where ``keep``: skip wins);
otherwise it is ``tile_keep`` unchanged and ``pos`` an unused alias of ``keep``, so the
lse walks compile to exactly what they were.
"""

import triton
import triton.language as tl

from flashnce.core import spec

REL_NONE = tl.constexpr(spec.relation_id("none"))
REL_DIAGONAL = tl.constexpr(spec.relation_id("diagonal"))
REL_TARGETS = tl.constexpr(spec.relation_id("targets"))
REL_LABELS = tl.constexpr(spec.relation_id("labels"))
REL_CSR = tl.constexpr(spec.relation_id("csr"))
ROLE_SKIP = tl.constexpr(spec.ROLE_SKIP)
ROLE_POSITIVE = tl.constexpr(spec.ROLE_POSITIVE)


@triton.jit
def relation_rows(R0, rows64, row_ok, RELATION: tl.constexpr, SWAPPED: tl.constexpr):
    """Row-side fields loaded once per row block: (f0 [BA], f1 [BA], n_max).

    targets (not swapped): f0 = t_i (int32, like the column ids it is compared with);
    labels: f0 = a_i;  csr: f0 = indptr[i], f1 = the row's entry count (0 for padded rows)
    and n_max = the largest count in the block, the runtime trip count of the per-tile entry
    loop (computed here, so the host never syncs on it).
    """
    f0 = tl.zeros(rows64.shape, tl.int64)
    f1 = tl.zeros(rows64.shape, tl.int64)
    n_max = tl.zeros((), tl.int32)
    if RELATION == REL_TARGETS:
        if not SWAPPED:
            f0 = tl.load(R0 + rows64, mask=row_ok, other=-1).to(tl.int32)
    elif RELATION == REL_LABELS:
        f0 = tl.load(R0 + rows64, mask=row_ok, other=0)
    elif RELATION == REL_CSR:
        f0 = tl.load(R0 + rows64, mask=row_ok, other=0)
        f1 = tl.load(R0 + rows64 + 1, mask=row_ok, other=0) - f0
        n_max = tl.max(f1, 0).to(tl.int32)
    return f0, f1, n_max


@triton.jit
def _csr_keep(keep, cols, f0, f1, n_max, R1, R2, SKIP_POSITIVES: tl.constexpr):
    """``keep`` minus the tile's skipped listed pairs: one pass over the rows' entries (up to
    n_max each), each compared against the tile's columns. Folding into ``keep`` directly
    (no separate skip tile) keeps one [BLOCK_A, BLOCK_B] mask live instead of two."""
    for e in range(0, n_max):
        has = e < f1
        # Column ids fit int32 (as do the walk's cols): a 64-bit compare tile costs twice the
        # registers.
        c = tl.load(R1 + f0 + e, mask=has, other=-1).to(tl.int32)
        if SKIP_POSITIVES:
            hit = has  # skip and positive entries alike
        else:
            role = tl.load(R2 + f0 + e, mask=has, other=ROLE_POSITIVE)
            hit = has & (role == ROLE_SKIP)
        keep = keep & ~(hit[:, None] & (c[:, None] == cols[None, :]))
    return keep


@triton.jit
def tile_keep(valid, rows, cols, cols64, col_ok, f0, f1, n_max, R0, R1, R2, diag_offset,
              RELATION: tl.constexpr, SKIP_SELF: tl.constexpr, SKIP_POSITIVES: tl.constexpr,
              SWAPPED: tl.constexpr):
    """The kept pairs of one tile: ``valid`` (in bounds) minus the relation's skips."""
    keep = valid
    if SKIP_SELF:
        keep = keep & (cols[None, :] != rows[:, None] + diag_offset)
    if RELATION == REL_CSR:
        keep = _csr_keep(keep, cols, f0, f1, n_max, R1, R2, SKIP_POSITIVES)
    elif SKIP_POSITIVES:
        if RELATION != REL_NONE:
            keep = keep & ~tile_positive(rows, cols, cols64, col_ok, f0, R0, R1, diag_offset,
                                         RELATION, SWAPPED)
    return keep


@triton.jit
def _csr_roles(keep, cols, f0, f1, n_max, R1, R2):
    """``_csr_keep`` (no SKIP_POSITIVES) that also marks the listed ROLE_POSITIVE pairs, from
    the same pass over the entries (one load of each entry's column and role)."""
    pos = tl.zeros_like(keep)
    for e in range(0, n_max):
        has = e < f1
        c = tl.load(R1 + f0 + e, mask=has, other=-1).to(tl.int32)
        role = tl.load(R2 + f0 + e, mask=has, other=ROLE_POSITIVE)
        match = c[:, None] == cols[None, :]
        keep = keep & ~((has & (role == ROLE_SKIP))[:, None] & match)
        pos = pos | ((has & (role == ROLE_POSITIVE))[:, None] & match)
    return keep, pos


@triton.jit
def tile_positive(rows, cols, cols64, col_ok, f0, R0, R1, diag_offset,
                  RELATION: tl.constexpr, SWAPPED: tl.constexpr):
    """The relation's positives of one tile (diagonal, targets, labels; not csr, whose roles
    come from the entry loop). The same tests ``tile_keep`` skips with SKIP_POSITIVES."""
    if RELATION == REL_DIAGONAL:
        pos = cols[None, :] == rows[:, None] + diag_offset
    elif RELATION == REL_TARGETS:
        if SWAPPED:
            t = tl.load(R0 + cols64, mask=col_ok, other=-1).to(tl.int32)
            pos = t[None, :] == rows[:, None]
        else:
            pos = f0[:, None] == cols[None, :]
    else:
        tl.static_assert(RELATION == REL_LABELS)
        b = tl.load(R1 + cols64, mask=col_ok, other=0)
        pos = f0[:, None] == b[None, :]
    return pos


@triton.jit
def tile_roles(valid, rows, cols, cols64, col_ok, f0, f1, n_max, R0, R1, R2, diag_offset,
               RELATION: tl.constexpr, SKIP_SELF: tl.constexpr, SKIP_POSITIVES: tl.constexpr,
               SWAPPED: tl.constexpr, POSITIVES: tl.constexpr):
    """(keep, pos) of one tile. POSITIVES is set by the launcher only for a stat that reads
    the positive role and a relation whose positives are kept (never with SKIP_POSITIVES or
    relation none); without it ``pos`` is an alias of ``keep`` that the stat must not read."""
    if POSITIVES:
        tl.static_assert(RELATION != REL_NONE)
        tl.static_assert(not SKIP_POSITIVES)
        keep = valid
        if SKIP_SELF:
            keep = keep & (cols[None, :] != rows[:, None] + diag_offset)
        if RELATION == REL_CSR:
            keep, pos = _csr_roles(keep, cols, f0, f1, n_max, R1, R2)
        else:
            pos = tile_positive(rows, cols, cols64, col_ok, f0, R0, R1, diag_offset, RELATION,
                                SWAPPED)
    else:
        keep = tile_keep(valid, rows, cols, cols64, col_ok, f0, f1, n_max, R0, R1, R2,
                         diag_offset, RELATION, SKIP_SELF, SKIP_POSITIVES, SWAPPED)
        pos = keep
    return keep, pos
