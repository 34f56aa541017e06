"""Hierarchy embeddings: transitive closure, exclusion CSR and reconstruction metrics.

Nothing here needs WordNet or nltk: a hierarchy is a list of direct (child, parent) edges
over node names; ``flashnce.examples.wordnet`` builds that list from WordNet.

Conventions (Nickel & Kiela 2017, "Poincare Embeddings for Learning Hierarchical
Representations"; their code: facebookresearch/poincare-embeddings):
- the training and evaluation relation is the transitive closure D = {(u, v): v is a proper
  ancestor of u}, one-way (hyponym -> hypernym);
- reconstruction: for every node u with at least one ancestor, each true ancestor v is ranked
  among u's non-ancestors (u itself left out) by distance:
      rank(u, v) = 1 + #{w : (u, w) not in D, w != u, d(u, w) < d(u, v)},
  mean rank = mean over all pairs (u, v) in D; and
      AP(u) = mean over u's ancestors v of  #{v' in A(u) : d(u, v') <= d(u, v)}
                                          / #{w != u : d(u, w) <= d(u, v)},
  sklearn's average_precision_score(labels, -dists) with u's own distance put last (ties in
  distance share one threshold, as sklearn's do); MAP = mean over those nodes of AP(u).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..geometry import get_geometry, tile_logits


# --------------------------------------------------------------------------- closure


@dataclass
class Hierarchy:
    """A transitive closure over ``names`` (node i is names[i]).

    edges [E, 2] int64: the closure's (u, v) pairs, v a proper ancestor of u, sorted by
    (u, v); ``indptr`` [N + 1] / ``indices`` [E]: the same as a CSR (row u's ancestors are
    indices[indptr[u]:indptr[u + 1]], ascending), so ``indices`` == edges[:, 1].
    """

    names: list
    edges: torch.Tensor
    indptr: torch.Tensor
    indices: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])


def ancestor_sets(parents: dict) -> dict:
    """{node: frozenset of proper ancestors} from {node: iterable of direct parents}.

    Iterative post-order DFS with memoisation, so it is linear in the closure's size and does
    not recurse (WordNet's noun DAG is ~20 deep, but other hierarchies may not be). A cycle
    raises ValueError (a hierarchy is a DAG).
    """
    done: dict = {}
    on_stack: set = set()
    for root in parents:
        if root in done:
            continue
        stack = [(root, iter(parents.get(root, ())))]
        on_stack.add(root)
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                on_stack.discard(node)
                acc = set()
                for p in parents.get(node, ()):
                    acc.add(p)
                    acc |= done[p]
                done[node] = frozenset(acc)
            elif child in on_stack:
                raise ValueError(f"the hierarchy has a cycle through {child!r}")
            elif child not in done:
                on_stack.add(child)
                stack.append((child, iter(parents.get(child, ()))))
    return done


def transitive_closure(direct_edges, names=None) -> Hierarchy:
    """The closure of direct (child, parent) edges as a ``Hierarchy``.

    direct_edges: iterable of (child, parent) name pairs (hashable, sortable names).
    names: optional node order; default: every name in the closure, sorted. Nodes are those
    with at least one closure edge (as in Nickel & Kiela's edge-list files).
    """
    parents: dict = {}
    for child, parent in direct_edges:
        if child == parent:
            raise ValueError(f"direct_edges has a self-loop at {child!r}")
        parents.setdefault(child, set()).add(parent)
        parents.setdefault(parent, set())
    anc = ancestor_sets(parents)
    pairs = [(u, v) for u, vs in anc.items() for v in vs]
    return closure_from_pairs(pairs, names)


def instance_closure(hypernyms: dict, instance_hypernyms: dict, names=None) -> Hierarchy:
    """Nickel & Kiela's closure of a hierarchy with instances (their
    wordnet/transitive_closure.py, which gives the 743,086 WordNet noun pairs):
    every node u -> its hypernym closure A_H(u), and every instance i (a node with instance
    hypernyms) also -> each p in its instance-hypernym closure I(i) and p's hypernym
    closure: A(i) = A_H(i) + union over p in I(i) of ({p} + A_H(p)). Unlike the closure of
    the union of both edge kinds it never follows an instance edge above a hypernym edge
    (u -> hypernym c -> instance hypernym of c); in WordNet 3.0 that leaves out 155 pairs
    through the 5 noun synsets that have both kinds of parent.
    hypernyms / instance_hypernyms: {node: iterable of direct parents} by name."""
    a_h = ancestor_sets({u: list(ps) for u, ps in hypernyms.items()})
    a_i = ancestor_sets({u: list(ps) for u, ps in instance_hypernyms.items()})
    pairs = {(u, v) for u, vs in a_h.items() for v in vs}
    for i in instance_hypernyms:
        for p in a_i[i]:
            pairs.add((i, p))
            pairs.update((i, v) for v in a_h.get(p, ()))
    return closure_from_pairs(pairs, names)


def closure_from_pairs(pairs, names=None) -> Hierarchy:
    """A ``Hierarchy`` from closure pairs (u, v) given by name (already transitive)."""
    pairs = set(pairs)
    if names is None:
        names = sorted({x for p in pairs for x in p})
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise ValueError("names has duplicates")
    if pairs:
        edges = torch.tensor(sorted((index[u], index[v]) for u, v in pairs), dtype=torch.int64)
    else:
        edges = torch.zeros((0, 2), dtype=torch.int64)
    counts = torch.bincount(edges[:, 0], minlength=len(names))
    indptr = torch.zeros(len(names) + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    return Hierarchy(list(names), edges, indptr, edges[:, 1].contiguous())


def subtree(h: Hierarchy, root: str, drop_children=()) -> Hierarchy:
    """The closure restricted to ``root`` and its descendants (both ends inside), minus the
    pairs whose child is in ``drop_children``; nodes are those left with an edge."""
    r = h.names.index(root)
    inside = torch.zeros(h.num_nodes, dtype=torch.bool)
    inside[r] = True
    inside[h.edges[h.edges[:, 1] == r, 0]] = True
    dropped = {h.names.index(n) for n in drop_children if n in h.names}
    keep = inside[h.edges[:, 0]] & inside[h.edges[:, 1]]
    pairs = [(h.names[u], h.names[v]) for u, v in h.edges[keep].tolist() if u not in dropped]
    return closure_from_pairs(pairs)


# --------------------------------------------------------------------------- exclusion CSR


def batch_exclude(h: Hierarchy, u: torch.Tensor):
    """``flashnce.infonce``'s exclude= CSR for rows u [B]: row i leaves out column u_i and all
    of u_i's ancestors. Its target v_i is one of them, and infonce always counts the target,
    so the same per-node set serves every edge (u_i, v_i). Returns (indptr [B + 1], indices)."""
    starts = h.indptr[u]
    counts = h.indptr[u + 1] - starts + 1  # +1: the node's own column
    indptr = torch.zeros(u.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    total = int(indptr[-1])
    # position inside each row's segment: 0 is the node itself, k >= 1 its (k-1)-th ancestor
    offset = torch.arange(total, dtype=torch.int64) - torch.repeat_interleave(indptr[:-1], counts)
    row = torch.repeat_interleave(torch.arange(u.shape[0]), counts)
    anc = h.indices[(starts[row] + offset - 1).clamp_min(0)] if h.indices.numel() else offset
    indices = torch.where(offset == 0, u[row], anc)
    return indptr, indices


# --------------------------------------------------------------------------- metrics


def distances(x: torch.Tensor, y: torch.Tensor, geometry: str, curvature=1.0) -> torch.Tensor:
    """d(x_i, y_j) [n, m] in float64 through flashnce's own epilogue (``tile_logits``), so the
    metric sees the geometry the loss trained (tangent inputs for the hyperbolic ones; the
    direction + radius form stays exact near the ball's boundary, where ball coordinates
    round to 1). sqeuclidean gives |x - y|^2 (a monotone map of the distance: same ranks)."""
    geo = get_geometry(geometry)
    x, y = x.detach().double(), y.detach().double()
    c = torch.tensor(float(curvature), dtype=torch.float64)
    a = geo.row_scalars(x.square().sum(-1), c, False)
    b = geo.row_scalars(y.square().sum(-1), c, False)
    return -tile_logits(geo.kind, x @ y.T, a, b, 1.0, float(c) ** -0.5, 1e-14)


def _count_at_most(c: torch.Tensor, kmax: int) -> torch.Tensor:
    """c [C, N] ints in [0, kmax] -> [C, kmax] with out[r, j] = #{w : c[r, w] <= j}."""
    hist = torch.zeros(c.shape[0], kmax + 1, dtype=torch.int64)
    hist.scatter_add_(1, c, torch.ones_like(c))
    return hist.cumsum(1)[:, :kmax]


@torch.no_grad()
def reconstruction(emb: torch.Tensor, h: Hierarchy, geometry: str, curvature=1.0,
                   chunk: int = 256, rows=None) -> dict:
    """Exact reconstruction mean rank and MAP (module docstring), ``chunk`` rows at a time
    (memory O(chunk * N), never N x N). ``rows``: optional node indices [R] to evaluate
    instead of all nodes (each still ranked against all N; nodes without an ancestor are
    skipped): an unbiased subsample for learning curves on large hierarchies.
    Returns {"mean_rank", "map", "pairs", "nodes", "num_nodes"}."""
    n = h.num_nodes
    deg = h.indptr[1:] - h.indptr[:-1]
    if rows is None:
        rows = torch.nonzero(deg > 0).flatten()
    else:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        rows = rows[deg[rows] > 0]
    rank_sum, ap_sum = 0.0, 0.0
    for start in range(0, rows.numel(), chunk):
        u = rows[start:start + chunk]
        d = distances(emb[u], emb, geometry, curvature)  # [C, N]
        d[torch.arange(u.numel()), u] = float("inf")  # u itself is never ranked
        k = deg[u]
        kmax = int(k.max())
        # positives as a padded [C, kmax] block (padding = +inf, masked out below)
        ar = torch.arange(kmax)
        valid = ar[None, :] < k[:, None]
        col = h.indices[(h.indptr[u][:, None] + ar[None, :]).clamp_max(h.indices.numel() - 1)]
        pos = torch.where(valid, d.gather(1, torch.where(valid, col, 0)), float("inf"))
        # work in sorted positive order (the sums below do not depend on it; the +inf
        # padding stays last, so ``valid`` is unchanged). Counting the N distances into
        # the k sorted positives costs O(N log k) per row instead of sorting all N:
        # d_w < pos_j  <=>  #{i: pos_i <= d_w} <= j, and d_w <= pos_j <=> #{i: pos_i < d_w} <= j.
        pos = pos.sort(dim=1).values
        less_all = _count_at_most(torch.searchsorted(pos, d, right=True), kmax)
        le_all = _count_at_most(torch.searchsorted(pos, d, right=False), kmax)
        less_pos = torch.searchsorted(pos, pos, right=False)
        le_pos = torch.searchsorted(pos, pos, right=True)
        ranks = 1 + (less_all - less_pos)
        prec = le_pos.double() / le_all.double()
        rank_sum += float(torch.where(valid, ranks.double(), 0.0).sum())
        ap_sum += float((torch.where(valid, prec, 0.0).sum(1) / k.double()).sum())
    pairs = int(deg[rows].sum())
    return {"mean_rank": rank_sum / max(pairs, 1), "map": ap_sum / max(rows.numel(), 1),
            "pairs": pairs, "nodes": int(rows.numel()), "num_nodes": n}
