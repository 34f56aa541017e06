"""Relations: the role of every pair (i, j) -- skip, positive or negative -- as small tensors.

A ``Relation`` is what travels to a backend: its name (``spec.RELATIONS``), its int64 index
tensors (``spec.RELATION_TENSORS``), the flags (``FLAG_SKIP_SELF``, ``FLAG_SKIP_POSITIVES``),
the self/diagonal offset and the number of columns seen from both sides (``cols_both``; the
rest are row-only). The semantics are in ``flashnce.core.spec``; this module is their torch
executable spec: ``tile_roles`` gives the roles of one tile (the torch backend's masks) and
``dense_roles`` the whole N x M matrix (tests and the materialised reference only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from . import spec

NEGATIVE = 2  # role code of tile_roles for pairs that are neither skipped nor positive


@dataclass(frozen=True)
class Relation:
    name: str = "none"
    tensors: tuple = field(default=())
    flags: int = 0
    diag_offset: int = 0
    cols_both: int | None = None  # None: all columns (resolved by ``resolved``)

    # ---- constructors ------------------------------------------------------------------------
    @staticmethod
    def none(*, skip_self=False, diag_offset=0, cols_both=None) -> "Relation":
        return Relation("none", (), spec.FLAG_SKIP_SELF if skip_self else 0, int(diag_offset),
                        cols_both)

    @staticmethod
    def diagonal(*, diag_offset=0, skip_self=False, skip_positives=False,
                 cols_both=None) -> "Relation":
        return Relation("diagonal", (), _flags(skip_self, skip_positives), int(diag_offset),
                        cols_both)

    @staticmethod
    def targets(t: torch.Tensor, *, skip_self=False, skip_positives=False, diag_offset=0,
                cols_both=None) -> "Relation":
        return Relation("targets", (t.contiguous(),), _flags(skip_self, skip_positives),
                        int(diag_offset), cols_both)

    @staticmethod
    def labels(row_labels: torch.Tensor, col_labels: torch.Tensor, *, skip_self=False,
               skip_positives=False, diag_offset=0, cols_both=None) -> "Relation":
        return Relation("labels", (row_labels.contiguous(), col_labels.contiguous()),
                        _flags(skip_self, skip_positives), int(diag_offset), cols_both)

    @staticmethod
    def csr(indptr: torch.Tensor, indices: torch.Tensor, roles: torch.Tensor, n_cols: int, *,
            skip_self=False, skip_positives=False, diag_offset=0,
            cols_both=None) -> "Relation":
        """Per-row column sets; ``indices`` strictly increasing within each row. The
        transposed sets (per column) are built here once, O(nnz log nnz)."""
        indptr, indices = indptr.contiguous(), indices.contiguous()
        roles = roles.to(torch.int64).contiguous()
        n = indptr.numel() - 1
        rows = torch.repeat_interleave(torch.arange(n, device=indptr.device),
                                       indptr[1:] - indptr[:-1])
        # Sort by (column, row): rows are already increasing, so a stable sort by column.
        order = torch.sort(indices, stable=True).indices
        t_indices = rows[order].contiguous()
        t_roles = roles[order].contiguous()
        counts = torch.bincount(indices, minlength=n_cols)[:n_cols]
        t_indptr = torch.zeros(n_cols + 1, dtype=torch.int64, device=indptr.device)
        t_indptr[1:] = torch.cumsum(counts, 0)
        return Relation("csr", (indptr, indices, roles, t_indptr, t_indices, t_roles),
                        _flags(skip_self, skip_positives), int(diag_offset), cols_both)

    # ---- derived -----------------------------------------------------------------------------
    def m0(self, m: int) -> int:
        """The columns seen from both sides out of M (all of them when ``cols_both`` is None);
        the rest are row-only."""
        return int(m) if self.cols_both is None else self.cols_both

    def resolved(self, m: int) -> "Relation":
        """With ``cols_both`` set to a number (all M columns when None)."""
        return self if self.cols_both is not None else replace(self, cols_both=self.m0(m))

    @property
    def skip_self(self) -> bool:
        return bool(self.flags & spec.FLAG_SKIP_SELF)

    @property
    def skip_positives(self) -> bool:
        return bool(self.flags & spec.FLAG_SKIP_POSITIVES)

    def options(self, kind: str, stat: str, m: int) -> list[int]:
        """The compiled ops' options vector (layout in ``spec``)."""
        opts = [0] * spec.NUM_OPTIONS
        opts[spec.OPT_KIND] = spec.kind_id(kind)
        opts[spec.OPT_STAT] = spec.stat_id(stat)
        opts[spec.OPT_RELATION] = spec.relation_id(self.name)
        opts[spec.OPT_FLAGS] = self.flags
        opts[spec.OPT_DIAG_OFFSET] = self.diag_offset
        opts[spec.OPT_COLS_BOTH] = self.m0(m)
        return opts


def _flags(skip_self: bool, skip_positives: bool) -> int:
    return (spec.FLAG_SKIP_SELF if skip_self else 0) | (
        spec.FLAG_SKIP_POSITIVES if skip_positives else 0)


def tile_roles(rel: Relation, i0: int, i1: int, j0: int, j1: int, device) -> torch.Tensor | None:
    """Roles [i1-i0, j1-j0] (int8: ROLE_SKIP, ROLE_POSITIVE, NEGATIVE) of one tile, or None
    when the relation has no positives and no skips (every pair a negative)."""
    rows = torch.arange(i0, i1, device=device)[:, None]
    cols = torch.arange(j0, j1, device=device)[None, :]
    shape = (i1 - i0, j1 - j0)
    positive = None
    if rel.name == "diagonal":
        positive = cols == rows + rel.diag_offset
    elif rel.name == "targets":
        positive = rel.tensors[0][i0:i1, None] == cols
    elif rel.name == "labels":
        positive = rel.tensors[0][i0:i1, None] == rel.tensors[1][None, j0:j1]
    skip = None
    if rel.name == "csr":
        indptr, indices, roles = rel.tensors[:3]
        skip = torch.zeros(shape, dtype=torch.bool, device=device)
        positive = torch.zeros(shape, dtype=torch.bool, device=device)
        lo, hi = int(indptr[i0]), int(indptr[i1])
        if hi > lo:
            counts = indptr[i0 + 1:i1 + 1] - indptr[i0:i1]
            r = torch.repeat_interleave(torch.arange(i1 - i0, device=device), counts)
            c, role = indices[lo:hi], roles[lo:hi]
            inside = (c >= j0) & (c < j1)
            r, c, role = r[inside], c[inside] - j0, role[inside]
            skip[r[role == spec.ROLE_SKIP], c[role == spec.ROLE_SKIP]] = True
            positive[r[role == spec.ROLE_POSITIVE], c[role == spec.ROLE_POSITIVE]] = True
    if rel.skip_self:
        self_pairs = cols == rows + rel.diag_offset
        skip = self_pairs if skip is None else skip | self_pairs
    if rel.skip_positives and positive is not None:
        skip = positive if skip is None else skip | positive
    if positive is None and skip is None:
        return None
    roles_t = torch.full(shape, NEGATIVE, dtype=torch.int8, device=device)
    if positive is not None:
        roles_t = roles_t.masked_fill(positive, spec.ROLE_POSITIVE)
    if skip is not None:
        roles_t = roles_t.masked_fill(skip, spec.ROLE_SKIP)
    return roles_t


def dense_roles(rel: Relation, n: int, m: int, device) -> torch.Tensor:
    """The whole [N, M] role matrix (tests and the materialised reference only)."""
    roles = tile_roles(rel, 0, n, 0, m, device)
    if roles is None:
        roles = torch.full((n, m), NEGATIVE, dtype=torch.int8, device=device)
    return roles


def exclusion_relation(csr, targets, n: int, m: int, cols_both) -> Relation:
    """The csr relation that skips each row's excluded columns and its target (the target is
    merged back as the positive): the union, sorted and deduplicated per row, O(nnz log nnz).
    ``targets`` None means row i's target is column i."""
    indptr, indices = csr
    device = indices.device
    rows = torch.repeat_interleave(torch.arange(n, device=device), indptr[1:] - indptr[:-1])
    t = torch.arange(n, device=device) if targets is None else targets.to(device)
    keys = torch.cat([rows * m + indices, torch.arange(n, device=device) * m + t])
    keys = torch.unique(keys)  # sorted: by row, then column
    rows, cols = keys // m, keys % m
    new_indptr = torch.zeros(n + 1, dtype=torch.int64, device=device)
    new_indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n)[:n], 0)
    roles = torch.full_like(cols, spec.ROLE_SKIP)
    return Relation.csr(new_indptr, cols, roles, m, cols_both=cols_both)
