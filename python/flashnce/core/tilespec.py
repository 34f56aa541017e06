"""``TileSpec``: the static options of one tile-op call (kind, stat, relation, kappa)."""

from __future__ import annotations

from dataclasses import dataclass

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
