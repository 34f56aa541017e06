"""``TileSpec``: the static options of one tile-op call (kind, stat, relation, kappa)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .relation import Relation


@dataclass(frozen=True)
class TileSpec:
    kind: str  # flashnce.core.spec.KINDS
    stat: str  # flashnce.core.spec.STATS
    relation: Relation
    kappa: float  # flashnce.core.numerics.clamp_kappa

    def options(self, m: int) -> list[int]:
        """The compiled ops' options vector for M columns (layout in ``spec``)."""
        return self.relation.options(self.kind, self.stat, m)

    def cols_both(self, m: int) -> int:
        """M0: the columns seen from both sides (the rest are row-only)."""
        return self.relation.m0(m)

    def shifted(self, row_start: int, col_start: int) -> "TileSpec":
        """This spec for the block of a walk whose rows start at row ``row_start`` and columns
        at column ``col_start`` of the whole walk: self / diagonal pairs j == i + offset there
        are j == i + offset + row_start - col_start in block coordinates (the distributed ring,
        gathered blocks, ``core.block_walk``'s chunk pairs)."""
        rel = self.relation
        return replace(self, relation=replace(
            rel, diag_offset=rel.diag_offset + row_start - col_start))
