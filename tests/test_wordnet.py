"""flashnce.examples.hierarchy / wordnet: closure, exclusion CSR, metrics, one training step.

The closure, metric and training tests run on small edge lists (no WordNet, no nltk). The
loader test reads tests/data/wordnet_tiny/ (WordNet's dict format, a 9-synset noun
hierarchy) with nltk's reader and skips, with the reason, when nltk is not installed.
"""

import itertools
import random
from pathlib import Path

import pytest
import torch

import flashnce
from flashnce.examples import hierarchy as H
from flashnce.examples import wordnet as W

TINY = Path(__file__).parent / "data" / "wordnet_tiny"

# a small DAG: two roots' worth of paths, a node with two parents (h), depth 4
DIRECT = [("b", "a"), ("c", "a"), ("d", "b"), ("e", "b"), ("f", "c"), ("g", "d"),
          ("h", "d"), ("h", "f"), ("i", "h"), ("k", "j")]


def brute_closure(direct):
    """All (u, v) with a directed path u -> ... -> v (Floyd-Warshall style fixpoint)."""
    pairs = set(direct)
    while True:
        new = {(u, w) for (u, v1), (v2, w) in itertools.product(pairs, pairs) if v1 == v2}
        if new <= pairs:
            return pairs
        pairs |= new


def random_dag(n, p, seed):
    rng = random.Random(seed)
    return [(f"n{i:02d}", f"n{j:02d}") for i in range(n) for j in range(i) if rng.random() < p]


@pytest.mark.parametrize("direct", [DIRECT, random_dag(25, 0.12, 0), random_dag(30, 0.2, 1)])
def test_closure_matches_brute_force(direct):
    h = H.transitive_closure(direct)
    got = {(h.names[u], h.names[v]) for u, v in h.edges.tolist()}
    assert got == brute_closure(direct)
    # CSR agrees with the edge list, rows ascending
    for u in range(h.num_nodes):
        row = h.indices[h.indptr[u]:h.indptr[u + 1]].tolist()
        assert row == sorted(v for uu, v in h.edges.tolist() if uu == u)


def test_closure_rejects_cycles():
    with pytest.raises(ValueError, match="cycle"):
        H.transitive_closure([("a", "b"), ("b", "c"), ("c", "a")])


def test_subtree_keeps_inside_pairs_and_drops_children():
    h = H.transitive_closure(DIRECT)
    s = H.subtree(h, "b", drop_children=("e",))
    got = {(s.names[u], s.names[v]) for u, v in s.edges.tolist()}
    inside = {"b", "d", "e", "g", "h", "i"}
    want = {(u, v) for u, v in brute_closure(DIRECT) if u in inside and v in inside and u != "e"}
    assert got == want


def test_batch_exclude_is_self_plus_ancestors():
    h = H.transitive_closure(DIRECT)
    u = torch.tensor([h.names.index(x) for x in ("i", "a", "g", "i")])
    indptr, indices = H.batch_exclude(h, u)
    assert indptr.dtype == indices.dtype == torch.int64
    for r, node in enumerate(u.tolist()):
        row = set(indices[indptr[r]:indptr[r + 1]].tolist())
        assert row == {node} | set(h.indices[h.indptr[node]:h.indptr[node + 1]].tolist())


def brute_metrics(d, h):
    """Nickel & Kiela's eval_reconstruction_slow + sklearn's AP, in plain Python."""
    ranks, aps = [], []
    n = h.num_nodes
    for u in range(n):
        pos = set(h.indices[h.indptr[u]:h.indptr[u + 1]].tolist())
        if not pos:
            continue
        du = [float(d[u, w]) for w in range(n)]
        du[u] = float("inf")
        for v in pos:
            ranks.append(1 + sum(1 for w in range(n) if w not in pos and w != u
                                 and du[w] < du[v]))
        # sklearn average_precision_score(labels, -du): precision at each positive's threshold
        prec = [sum(1 for v2 in pos if du[v2] <= du[v]) / sum(1 for w in range(n) if du[w] <= du[v])
                for v in pos]
        aps.append(sum(prec) / len(prec))
    return sum(ranks) / len(ranks), sum(aps) / len(aps)


@pytest.mark.parametrize("geometry", ["poincare", "lorentz", "sqeuclidean"])
def test_reconstruction_matches_brute_force(geometry):
    h = H.transitive_closure(random_dag(30, 0.15, 2))
    emb = torch.randn(h.num_nodes, 3, generator=torch.Generator().manual_seed(3),
                      dtype=torch.float64)
    d = H.distances(emb, emb, geometry)
    mr, ap = brute_metrics(d, h)
    got = H.reconstruction(emb, h, geometry, chunk=7)  # chunks smaller than N
    assert got["mean_rank"] == pytest.approx(mr, rel=1e-12)
    assert got["map"] == pytest.approx(ap, rel=1e-12)
    assert got["pairs"] == h.num_edges


def test_reconstruction_handles_ties_like_sklearn():
    # quantised distances: many ties between positives and negatives
    h = H.transitive_closure(DIRECT)
    emb = torch.randint(0, 2, (h.num_nodes, 2), generator=torch.Generator().manual_seed(0))
    emb = emb.double()
    mr, ap = brute_metrics(H.distances(emb, emb, "sqeuclidean"), h)
    got = H.reconstruction(emb, h, "sqeuclidean", chunk=3)
    assert got["mean_rank"] == pytest.approx(mr) and got["map"] == pytest.approx(ap)


def test_distances_match_reference():
    x = torch.randn(6, 4, dtype=torch.float64) * 0.5
    for g in ("poincare", "lorentz", "sqeuclidean"):
        ref = -flashnce.reference_logits(x, x, geometry=g)
        off = ~torch.eye(6, dtype=torch.bool)  # the diagonal sits at the epilogue's clamp
        assert torch.allclose(H.distances(x, x, g)[off], ref[off], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("geometry", ["poincare", "sqeuclidean"])
def test_loss_matches_masked_reference_and_step_reduces_it(geometry):
    h = H.transitive_closure(random_dag(20, 0.2, 4))
    emb = W.init_embeddings(h.num_nodes, 4, seed=0, init=0.3)
    edges = h.edges
    loss = W.loss_on(emb, h, edges, geometry)
    # oracle: materialised logits, excluded columns (self + other ancestors) at -inf
    logits = -H.distances(emb, emb, geometry)[edges[:, 0]]
    u, v = edges[:, 0], edges[:, 1]
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[torch.arange(len(u)), u] = True
    for r, (uu, vv) in enumerate(edges.tolist()):
        mask[r, h.indices[h.indptr[uu]:h.indptr[uu + 1]]] = True
    mask[torch.arange(len(u)), v] = False
    ref = torch.nn.functional.cross_entropy(logits.masked_fill(mask, -float("inf")), v)
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-4)
    opt = torch.optim.Adam([emb], lr=0.05)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert float(W.loss_on(emb, h, edges, geometry).detach()) < float(loss.detach())


def test_train_runs_and_improves_map():
    h = H.transitive_closure(DIRECT)
    before = H.reconstruction(W.init_embeddings(h.num_nodes, 2, seed=0), h, "poincare")
    emb, losses, _ = W.train(h, "poincare", 2, epochs=20, lr=0.1, batch=64, burnin=2,
                             progress=False)
    after = H.reconstruction(emb, h, "poincare")
    assert losses[-1] < losses[0]
    assert after["map"] > before["map"]


def test_missing_wordnet_dir_names_the_install_commands(tmp_path):
    with pytest.raises(W.WordNetMissing, match="apt-get install -y wordnet-base"):
        W.find_wordnet_dir(str(tmp_path))


def test_tiny_wordnet_loader():
    pytest.importorskip("nltk", reason="nltk is not installed: the WordNet reader test needs "
                        "it (pip install nltk)")
    wn = W.open_wordnet(str(TINY))
    h = H.transitive_closure(W.noun_direct_edges(wn))
    got = {(h.names[u], h.names[v]) for u, v in h.edges.tolist()}
    direct = set(W.noun_direct_edges(wn))
    assert ("dog.n.01", "canine.n.01") in direct
    assert ("rex.n.01", "dog.n.01") in direct  # an instance hypernym
    assert got == brute_closure(direct)
    assert ("rex.n.01", "mammal.n.01") in got
    # Nickel & Kiela's instance closure (what --subset nouns uses) is the same here: no
    # synset of the fixture has both hypernyms and instance hypernyms
    nk = H.instance_closure(*W.noun_parents(wn))
    assert {(nk.names[u], nk.names[v]) for u, v in nk.edges.tolist()} == got
    sub = H.transitive_closure(W.subtree_direct_edges(wn, "mammal.n.01"))
    assert {sub.names[u] for u in sub.edges[:, 0].tolist()} == {
        "canine.n.01", "dog.n.01", "cat.n.01", "feline.n.01", "carnivore.n.01", "rex.n.01"}
    assert "animal.n.01" not in sub.names


def test_rsgd_step_reduces_loss_and_stays_in_ball():
    h = H.transitive_closure(random_dag(20, 0.2, 4))
    x = W.init_embeddings(h.num_nodes, 2, seed=0, init=0.3)
    with torch.no_grad():
        x[0] = torch.tensor([0.7, 0.7 - 1e-6])  # |x| just under 1: the step must not leave
    loss = W.loss_on(x, h, h.edges, "poincare", on_manifold=True)
    loss.backward()
    W.rsgd_step_(x, lr=0.5)
    assert float(x.detach().norm(dim=1).max()) <= 1 - W.BALL_EPS + 1e-7
    after = W.loss_on(x, h, h.edges, "poincare", on_manifold=True)
    assert float(after.detach()) < float(loss.detach())


def test_ball_to_tangent_keeps_distances():
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x = 0.95 * x / (1 + x.norm(dim=1, keepdim=True))  # ball points, |x| < 0.95
    want = -flashnce.reference_logits(x, x, geometry="poincare", on_manifold=True)
    got = H.distances(W.ball_to_tangent(x), W.ball_to_tangent(x), "poincare")
    off = ~torch.eye(7, dtype=torch.bool)
    assert torch.allclose(got[off], want[off], rtol=1e-9)


def test_rowadam_step_reduces_loss_and_is_rotation_equivariant():
    h = H.transitive_closure(random_dag(20, 0.2, 4))
    x = W.init_embeddings(h.num_nodes, 2, seed=0, init=0.3)
    loss = W.loss_on(x, h, h.edges, "poincare")
    loss.backward()
    g = x.grad.clone()
    x0 = x.detach().clone()
    W.RowAdam([x], lr=0.02).step()
    assert float(W.loss_on(x, h, h.edges, "poincare").detach()) < float(loss.detach())
    # a rotated gradient gives the rotated step (per-coordinate Adam would not)
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    y = torch.nn.Parameter(x0 @ rot.T)
    y.grad = g @ rot.T
    W.RowAdam([y], lr=0.02).step()
    assert torch.allclose(y.detach(), x.detach() @ rot.T, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["rsgd", "sgd", "rowadam"])
def test_train_sgd_optimizers_improve_map(optimizer):
    h = H.transitive_closure(DIRECT)
    before = H.reconstruction(W.init_embeddings(h.num_nodes, 2, seed=0), h, "poincare")
    emb, losses, _ = W.train(h, "poincare", 2, epochs=20, lr=W.DEFAULT_LR[optimizer], batch=64,
                             burnin=2, optimizer=optimizer, progress=False)
    after = H.reconstruction(emb, h, "poincare")
    assert losses[-1] < losses[0]
    assert after["map"] > before["map"]


def test_train_rejects_rsgd_off_the_ball():
    h = H.transitive_closure(DIRECT)
    with pytest.raises(ValueError, match="rsgd"):
        W.train(h, "lorentz", 2, epochs=1, lr=1.0, batch=8, optimizer="rsgd", progress=False)


def test_instance_closure_follows_nickel_kiela():
    # hypernyms a <- b <- c <- d and r <- q; x is an instance of c, and c an instance of q.
    # x: I(x) = {c, q}, so x -> c, q and their hypernyms b, a, r. The class d below c gets
    # only its hypernyms (d -> c -> instance q is an instance edge above a hypernym edge),
    # although the closure of both edge kinds would add (d, q), (d, r).
    hyper = {"b": ["a"], "c": ["b"], "d": ["c"], "r": [], "q": ["r"], "x": []}
    inst = {"x": ["c"], "c": ["q"]}
    h = H.instance_closure(hyper, inst)
    got = {(h.names[u], h.names[v]) for u, v in h.edges.tolist()}
    want = {("b", "a"), ("c", "b"), ("c", "a"), ("d", "c"), ("d", "b"), ("d", "a"),
            ("q", "r"), ("c", "q"), ("c", "r"), ("x", "c"), ("x", "b"), ("x", "a"),
            ("x", "q"), ("x", "r")}
    assert got == want
    # without instances it is the plain transitive closure
    plain = H.instance_closure({"b": ["a"], "c": ["b"]}, {})
    assert plain.edges.tolist() == H.transitive_closure([("b", "a"), ("c", "b")]).edges.tolist()
