"""WordNet noun-hierarchy embeddings with flashnce's full softmax (Nickel & Kiela 2017).

    python -m flashnce.examples.wordnet --subset mammals --geometry poincare --dim 10
    python -m flashnce.examples.wordnet --subset mammals --geometry poincare lorentz \\
        sqeuclidean --dim 2 5 10 20 --threads 1 --out bench/results

Data (read locally, nothing is downloaded): WordNet 3.0 from Debian's ``wordnet-base``
(``apt-get install -y wordnet-base``: /usr/share/wordnet) read with nltk's WordNet reader
(``pip install nltk``). The relation is the transitive closure of hypernym edges built as
Nickel & Kiela build it (facebookresearch/poincare-embeddings, wordnet/transitive_closure.py:
every noun synset -> each hypernym in its hypernym closure, every instance -> its instance
hypernyms and their hypernym closures: ``hierarchy.instance_closure``); "mammals" keeps the
pairs with both ends in {mammal.n.01} + its descendants, minus those whose child is
tusker.n.01 or female_mammal.n.01 (the rows their wordnet/mammals_filter.txt removes; its
other patterns never match there). This gives their sizes: 1180 nodes / 6540 pairs
(mammals), 82115 / 743086 (all nouns; the closure of hypernym and instance-hypernym edges
together would have 155 more pairs).

Training: every closure pair (u, v) is one row of a one-way InfoNCE whose candidates are ALL
nodes, logit = -scale * d(u, w), with u's own column and u's other ancestors left out
(``exclude=``; see ``hierarchy.batch_exclude``):
    L = mean_(u,v) [ -log softmax_w(-s d(u, w))_v ],  w over {v} + non-ancestors of u.
Nickel & Kiela sample 10 / 50 such negatives; here the sum runs over all of them. The
embeddings are free parameters: tangent vectors at the origin for poincare / lorentz (no
Riemannian optimiser needed: the exponential map is inside the geometry, so plain Adam on R^d
is exact; ``project_radius_`` keeps rows under the radius cap), plain vectors for
sqeuclidean (Nickel & Kiela's Euclidean baseline uses the squared distance,
hype/euclidean.py). Initialisation U(-1e-3, 1e-3) and a burn-in at lr / 10, as theirs.
``--optimizer``: adam (default), rowadam (one second moment per row), sgd, or rsgd (Poincare
only: Riemannian SGD on ball points, on_manifold=True, their optimiser; the default for
Poincare d = 2, where per-coordinate Adam pulls the points onto a diamond and stalls).
Evaluation: reconstruction mean rank and MAP (``hierarchy.reconstruction``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from .hierarchy import (Hierarchy, batch_exclude, instance_closure, reconstruction, subtree,
                        transitive_closure)

DEFAULT_WORDNET_DIRS = ("/usr/share/wordnet", "/usr/share/WordNet-3.0/dict",
                        "/usr/local/WordNet-3.0/dict")
INSTALL_HINT = ("apt-get install -y wordnet-base   (WordNet 3.0 -> /usr/share/wordnet)\n"
                "pip install nltk                  (the reader)")
# Nickel & Kiela's mammals_filter.txt rows that can match a (child parent) row: the two
# anchored at the start, i.e. pairs whose child is one of these.
MAMMAL_DROP_CHILDREN = ("tusker.n.01", "female_mammal.n.01")
GEOMETRIES = ("poincare", "lorentz", "sqeuclidean", "euclidean")

# WordNet 3.0's 45 lexicographer files (lexnames(5WN)); Debian's wordnet-base does not ship
# the ``lexnames`` file that nltk's reader opens first, so it is served from here.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl").split()
_LEX_POS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Published reconstruction numbers, each read from a cited source (quotes, caveats and the
# comparison with ours: docs/wordnet_published.md); {(subset, geometry, dim): {"mean_rank",
# "map", "source", "url"}}. Nickel & Kiela 2017 Table 1 (WordNet nouns) was read from the
# crop of that table that gensim keeps (reconstruction_paper.png; the paper pages we could
# reach were cut off before it): its "Euclidean" row is the squared distance ||u - v||^2 of
# their code (model.py EuclideanDistance), there with rows max-normed to 1, so it sits under
# "sqeuclidean" (ours is uncapped); its "Translational" row has no geometry here. Mammals:
# only the Figure 2 caption's d = 5 Poincare number. Not found: any Lorentz number (Nickel &
# Kiela 2018), Bansal & Benton's 2021 reproduction table, numbers in the repository README.
_NK17 = ("https://papers.nips.cc/paper/"
         "7213-poincare-embeddings-for-learning-hierarchical-representations")
_NK17_T1 = "Nickel & Kiela 2017, Table 1 (WordNet nouns reconstruction)"
_NK17_T1_URL = ("https://github.com/piskvorky/gensim/blob/37f90ec121eb7cd401448a947e80953e0c53ccdc/"
                "docs/notebooks/poincare/reconstruction_paper.png")
PUBLISHED: dict = {
    **{("nouns", "poincare", d): {"mean_rank": r, "map": m, "source": _NK17_T1,
                                  "url": _NK17_T1_URL}
       for d, r, m in ((5, 4.9, 0.823), (10, 4.02, 0.851), (20, 3.84, 0.855),
                       (50, 3.98, 0.86), (100, 3.9, 0.857), (200, 3.83, 0.87))},
    **{("nouns", "sqeuclidean", d): {"mean_rank": r, "map": m,
                                     "source": _NK17_T1 + ", 'Euclidean' (norm-capped at 1)",
                                     "url": _NK17_T1_URL}
       for d, r, m in ((5, 3542.3, 0.024), (10, 2286.9, 0.059), (20, 1685.9, 0.087),
                       (50, 1281.7, 0.140), (100, 1187.3, 0.162), (200, 1157.3, 0.168))},
    ("mammals", "poincare", 5): {
        "mean_rank": 1.26, "map": 0.927,
        "source": "Nickel & Kiela 2017, Figure 2 caption, as quoted in poincare-embeddings "
                  "issues #4 and #53 (" + _NK17 + ")",
        "url": "https://github.com/facebookresearch/poincare-embeddings/issues/4"},
}


class WordNetMissing(RuntimeError):
    """WordNet's dict folder or nltk is not installed."""


# --------------------------------------------------------------------------- data


def find_wordnet_dir(path=None) -> str:
    """The WordNet dict folder: ``path``, $WORDNET_DIR, or a default install location."""
    candidates = [path] if path else [os.environ.get("WORDNET_DIR"), *DEFAULT_WORDNET_DIRS]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "data.noun")):
            return c
    raise WordNetMissing(f"no WordNet 3.0 dict folder (with data.noun) at "
                         f"{[c for c in candidates if c]}; install it with\n{INSTALL_HINT}\n"
                         f"or pass --wordnet-dir / set WORDNET_DIR")


def open_wordnet(path=None):
    """nltk's WordNetCorpusReader on the local dict folder (no download, no OMW)."""
    root = find_wordnet_dir(path)
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as e:
        raise WordNetMissing(f"nltk is not installed ({e}); install it with\n"
                             f"{INSTALL_HINT}") from e
    # nltk only reads corpus files under its data roots: add this one explicitly.
    if root not in nltk.data.path:
        nltk.data.path.append(root)

    class _LocalWordNet(WordNetCorpusReader):
        def open(self, file):
            if file == "lexnames" and not os.path.exists(os.path.join(root, "lexnames")):
                return io.StringIO("".join(f"{i:02d}\t{n}\t{_LEX_POS[n.split('.')[0]]}\n"
                                           for i, n in enumerate(_LEXNAMES)))
            return super().open(file)

        def map_wn(self, version="wordnet"):
            return None  # this *is* WordNet 3.0: no sense-key map to another version

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return _LocalWordNet(root, None)


def noun_direct_edges(wn):
    """Direct (child, parent) name pairs of the noun hierarchy: hypernyms and instance
    hypernyms. Their closure is Nickel & Kiela's (instances reach their classes' ancestors)."""
    edges = []
    for s in wn.all_synsets(pos="n"):
        for p in s.hypernyms() + s.instance_hypernyms():
            edges.append((s.name(), p.name()))
    return edges


def noun_parents(wn):
    """({synset: hypernym names}, {synset: instance-hypernym names}) over all noun synsets
    (the second only for synsets that have instance hypernyms)."""
    hyper, inst = {}, {}
    for s in wn.all_synsets(pos="n"):
        hyper[s.name()] = [p.name() for p in s.hypernyms()]
        ip = [p.name() for p in s.instance_hypernyms()]
        if ip:
            inst[s.name()] = ip
    return hyper, inst


def subtree_direct_edges(wn, root: str):
    """Direct (child, parent) pairs with both ends in ``root`` + its descendants (hyponyms
    and instance hyponyms). Every path between two such nodes stays inside (a node on it is a
    descendant of the upper end), so their closure is the full closure restricted there."""
    top = wn.synset(root)
    inside = {top} | set(top.closure(lambda s: s.hyponyms() + s.instance_hyponyms()))
    return [(s.name(), p.name()) for s in inside
            for p in s.hypernyms() + s.instance_hypernyms() if p in inside]


def load(subset: str = "mammals", wordnet_dir=None) -> Hierarchy:
    """The closure for ``subset`` in {"mammals", "nouns"}."""
    if subset not in ("mammals", "nouns"):
        raise ValueError(f"subset must be 'mammals' or 'nouns', got {subset!r}")
    wn = open_wordnet(wordnet_dir)
    if subset == "nouns":
        return instance_closure(*noun_parents(wn))  # 82115 nodes / 743086 pairs
    h = transitive_closure(subtree_direct_edges(wn, "mammal.n.01"))
    return subtree(h, "mammal.n.01", drop_children=MAMMAL_DROP_CHILDREN)


# --------------------------------------------------------------------------- training


def init_embeddings(n: int, dim: int, seed: int = 0, init: float = 1e-3) -> torch.nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter((torch.rand(n, dim, generator=g) * 2 - 1) * init)


def loss_on(emb: torch.Tensor, h: Hierarchy, edges: torch.Tensor, geometry: str,
            scale: float = 1.0, on_manifold: bool = False) -> torch.Tensor:
    """Mean full-softmax InfoNCE loss of closure pairs ``edges`` [B, 2] (all nodes compete).
    ``on_manifold``: rows of ``emb`` are Poincare ball points instead of tangent vectors."""
    import flashnce
    u, v = edges[:, 0], edges[:, 1]
    return flashnce.infonce(emb[u], emb, symmetric=False, targets=v,
                            exclude=batch_exclude(h, u), geometry=geometry, scale=scale,
                            on_manifold=on_manifold)


OPTIMIZERS = ("adam", "rowadam", "rsgd", "sgd")
# per optimizer, measured on mammals at batch 256 (lr = step on the batch-mean loss)
DEFAULT_LR = {"adam": 0.1, "rowadam": 0.1, "sgd": 20.0, "rsgd": 30.0}
DEFAULT_BURNIN = {"adam": 10, "rowadam": 10, "sgd": 10, "rsgd": 20}
BALL_EPS = 1e-5  # rsgd keeps ball points at |x| <= 1 - BALL_EPS (Nickel & Kiela's eps)


def default_optimizer(geometry: str, dim: int) -> str:
    """rsgd for the Poincare disk (d = 2), where Adam's per-coordinate step sizes pull the
    points onto a diamond (|x|_1 = const, its unit ball) and MAP stalls near 0.5; Adam
    elsewhere (measured: bench/results/wordnet_mammals.md)."""
    return "rsgd" if geometry == "poincare" and dim == 2 else "adam"


def default_scale(geometry: str, optimizer: str, dim: int = 10) -> float:
    """The logit scale s (logit = -s d): 4 for poincare / lorentz at d >= 5 with adam-type
    optimizers (mammals, 100 epochs: s = 4 vs 1 takes Poincare d = 5 from mean rank 1.80 /
    MAP 0.966 to 1.06 / 0.998 and d = 10 from 1.60 / 0.972 to 1.24 / 0.994; s = 2 gave
    1.53 / 1.08 at d = 5 / 10); 1 at d = 2 (Lorentz d = 2 with Adam: MAP 0.25 at s = 1,
    0.075 at s = 4), for rsgd (whose step grows with s: it diverged at s = 3) and for
    sqeuclidean (there s only rescales the vectors, which Adam's step size absorbs)."""
    return (4.0 if geometry in ("poincare", "lorentz") and optimizer != "rsgd" and dim >= 5
            else 1.0)


def ball_to_tangent(x: torch.Tensor) -> torch.Tensor:
    """Poincare ball point x (c = 1) -> tangent vector v at the origin with expmap0(v) = x:
    v = artanh(|x|) x / |x| (the geometry's tangent convention: rho = 2 |v|)."""
    x = x.double()
    r = x.norm(dim=1, keepdim=True)
    factor = torch.atanh(r.clamp_max(1 - 1e-16)) / r.clamp_min(1e-300)
    return torch.where(r > 0, factor, 1.0) * x


@torch.no_grad()
def rsgd_step_(x: torch.Tensor, lr: float, eps: float = BALL_EPS) -> torch.Tensor:
    """One Riemannian SGD step on Poincare ball points (Nickel & Kiela 2017, eq. 5-6):
    the Euclidean gradient times the inverse metric (1 - |x|^2)^2 / 4, then the rows pushed
    back to |x| <= 1 - eps. Returns x (updated in place)."""
    g = x.grad
    sq = x.square().sum(dim=1, keepdim=True)
    x.sub_(lr * g * ((1 - sq) ** 2 / 4))
    norms = x.norm(dim=1, keepdim=True)
    limit = 1 - eps
    x.mul_(torch.where(norms > limit, limit / norms.clamp_min(1e-30), 1.0))
    return x


class RowAdam(torch.optim.Optimizer):
    """Adam whose second moment is one scalar per row (the mean of the row's squared
    gradient) instead of one per coordinate, so each row's step is a rotation-equivariant
    rescaling of its gradient: no preferred axes. (Per-coordinate Adam steps by about lr in
    every coordinate at once, i.e. along the diagonals, which in d = 2 pulls the points onto
    a diamond |x|_1 = const.) As Riemannian Adam (Becigneul & Ganea 2019) keeps a per-point
    squared norm. Rows that get no gradient in a step (all zero) are left as they are."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["t"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros(p.shape[0], 1, dtype=p.dtype)
                st["t"] += 1
                t, m, v = st["t"], st["m"], st["v"]
                g = p.grad
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).add_(g.square().mean(dim=1, keepdim=True), alpha=1 - b2)
                denom = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                p.sub_(group["lr"] / (1 - b1 ** t) * m / denom)


def train(h: Hierarchy, geometry: str, dim: int, *, epochs: int, lr: float, batch: int,
          burnin: int = 10, burnin_factor: float = 0.1, scale: float = 1.0, seed: int = 0,
          optimizer: str | None = None, progress: bool = True, log=print, callback=None,
          callback_every_steps: int = 0, max_train_s: float | None = None, stats=None):
    """Train the free embeddings; returns (emb [N, d] tangent vectors for the hyperbolic
    geometries, per-epoch losses, seconds).

    optimizer (default ``default_optimizer``): "adam" (torch Adam on tangent vectors /
    vectors), "rowadam" (``RowAdam``, the same with one second moment per row), "sgd" (plain
    SGD on the same), "rsgd" (poincare only: Riemannian SGD on ball points, ``rsgd_step_``;
    the result is mapped to tangent vectors, ``ball_to_tangent``). The lr is the step on
    the batch-mean loss for all of them; the first ``burnin`` epochs run
    at lr * burnin_factor. ``callback(epoch, emb, loss)`` runs after each epoch, or every
    ``callback_every_steps`` steps (epoch then fractional), with the tangent vectors /
    vectors and the mean training loss since the last call; its time is not counted in the
    returned seconds. ``max_train_s``: stop after the step that passes this many seconds
    (the last epoch's loss is then over the pairs it saw). ``stats``: an optional dict that
    gets "steps" and "epochs_done" (fractional)."""
    import flashnce
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    optimizer = optimizer or default_optimizer(geometry, dim)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if optimizer == "rsgd" and geometry != "poincare":
        raise ValueError(f"optimizer='rsgd' needs geometry='poincare', got {geometry!r}")
    emb = init_embeddings(h.num_nodes, dim, seed)
    ball = optimizer == "rsgd"
    opt = None if ball else {"adam": torch.optim.Adam, "rowadam": RowAdam,
                             "sgd": torch.optim.SGD}[optimizer]([emb], lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    hyperbolic = geometry in ("poincare", "lorentz")
    losses = []
    bar = _progress(range(epochs), f"{geometry} d={dim}", progress)
    steps_per_epoch = -(-h.num_edges // batch)
    step, since, since_n, stop = 0, 0.0, 0, False
    t0 = time.perf_counter()

    def call(epoch_at):
        nonlocal t0, since, since_n
        tc = time.perf_counter()
        with torch.no_grad():
            callback(epoch_at, ball_to_tangent(emb.detach()).to(emb.dtype) if ball
                     else emb.detach(), since / max(since_n, 1))
        since, since_n = 0.0, 0
        t0 += time.perf_counter() - tc  # evaluation time is not training time

    for epoch in bar:
        step_lr = lr * (burnin_factor if epoch < burnin else 1.0)
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = step_lr
        perm = h.edges[torch.randperm(h.num_edges, generator=g)]
        total, seen = 0.0, 0
        for start in range(0, h.num_edges, batch):
            e = perm[start:start + batch]
            loss = loss_on(emb, h, e, geometry, scale, on_manifold=ball)
            emb.grad = None
            loss.backward()
            if ball:
                rsgd_step_(emb, step_lr)
            else:
                opt.step()
                if hyperbolic:
                    with torch.no_grad():
                        flashnce.project_radius_(emb.data, geometry=geometry)
            step += 1
            total += float(loss.detach()) * e.shape[0]
            seen += e.shape[0]
            since += float(loss.detach()) * e.shape[0]
            since_n += e.shape[0]
            if callback is not None and callback_every_steps and step % callback_every_steps == 0:
                call(step / steps_per_epoch)
            if max_train_s is not None and time.perf_counter() - t0 > max_train_s:
                stop = True
                break
        losses.append(total / max(seen, 1))
        if callback is not None and not callback_every_steps:
            call(epoch + 1)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        elif progress:
            log(f"  {geometry} d={dim} epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f} "
                f"({time.perf_counter() - t0:.1f} s)")
        if stop:
            break
    if stats is not None:
        stats.update(steps=step, epochs_done=step / steps_per_epoch)
    out = ball_to_tangent(emb.detach()).to(emb.dtype) if ball else emb.detach()
    return out, losses, time.perf_counter() - t0


def _progress(it, desc, enabled):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(it, desc=desc, leave=False, file=sys.stderr)
        except ImportError:
            pass
    return it


# --------------------------------------------------------------------------- outputs


def top_nodes(h: Hierarchy, k: int) -> list:
    """The k nodes with the most descendants (the most general ones), most first."""
    desc = torch.bincount(h.indices, minlength=h.num_nodes)
    return desc.argsort(descending=True)[:k].tolist()


def plot_disk(emb: torch.Tensor, h: Hierarchy, path, labels: int = 12, title=""):
    """Poincare d = 2, two panels: the ball points tanh(|v|) v / |v| of the tangent rows
    (c = 1; rows far out all round to the circle) and the same directions at plot radius
    rho / max rho (rho = 2|v|, the hyperbolic distance to the origin), where the levels of
    the hierarchy show. The most general nodes are labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    v = emb.double()
    r = v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    unit = v / r
    ball = (torch.tanh(r) * unit).numpy()
    rho = 2.0 * r
    lin = (rho / rho.max() * unit).numpy()
    top = top_nodes(h, labels)
    fig, axes = plt.subplots(1, 2, figsize=(14, 7.4))
    for ax, x, name in ((axes[0], ball, "Poincare disk (ball coordinates)"),
                        (axes[1], lin, "same directions, plot radius = rho / max rho")):
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="0.3", lw=1))
        ax.scatter(x[:, 0], x[:, 1], s=3, c="tab:blue", alpha=0.5, lw=0)
        for i in top:
            ax.scatter(x[i, 0], x[i, 1], s=18, c="tab:red")
            ax.annotate(h.names[i].split(".")[0], x[i], fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(name, fontsize=10)
    fig.suptitle(title or "WordNet closure, Poincare d = 2 (flashnce)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tables(results: dict, out: Path, subset: str, stem=None):
    """Write <stem>.json and .md (default stem wordnet_<subset>; runs sorted by geometry,
    then dim), with each run's learning curve when it has one."""
    stem = stem or f"wordnet_{subset}"
    out.mkdir(parents=True, exist_ok=True)
    order = {g: i for i, g in enumerate(GEOMETRIES)}
    runs = sorted(results["runs"], key=lambda r: (order.get(r["geometry"], 9), r["dim"]))
    results["runs"] = runs
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    env = results["environment"]
    lines = [f"# WordNet {subset}: reconstruction with flashnce's full softmax",
             "",
             f"{results['data']['nodes']} nodes, {results['data']['edges']} closure pairs "
             f"(built in {results['data']['build_s']:.1f} s). Each pair (u, v) is a one-way "
             "InfoNCE row over all nodes, u and u's other ancestors excluded; adam / sgd on "
             "tangent vectors (hyperbolic) / vectors (sqeuclidean), rsgd = Riemannian SGD on "
             "Poincare ball points. Mean rank and MAP as Nickel & Kiela's hype/graph.py "
             "eval_reconstruction.",
             "",
             f"CPU: {env.get('cpu_model')}, torch {env.get('torch_version')}, threads "
             f"{results['threads']}, git {str(env.get('git_sha'))[:12]}"
             f"{' (dirty)' if env.get('git_dirty') else ''}.",
             "",
             "| geometry | dim | optimizer | epochs | lr | burn-in | scale | batch | mean rank "
             "| MAP | paper mean rank | paper MAP | final loss | train s | s / epoch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | "
             "--- | --- |"]
    for r in runs:
        pub = r.get("published") or PUBLISHED.get((subset, r["geometry"], r["dim"])) or {}
        ep = r.get("epochs_done", r["epochs"])
        lines.append(
            f"| {r['geometry']} | {r['dim']} | {r.get('optimizer', 'adam')} | {ep:.4g} | "
            f"{r['lr']:g} | {r.get('burnin', '')} | {r.get('scale', 1.0):g} | {r['batch']} | "
            f"{r['mean_rank']:.3f} | {r['map']:.3f} | {pub.get('mean_rank', '')} | "
            f"{pub.get('map', '')} | {r['final_loss']:.4f} | {r['train_s']:.1f} | "
            f"{r['train_s'] / max(ep, 1e-9):.3f} |")
    lines += ["", "Paper columns: left blank unless the number was read from a cited source "
              "(`PUBLISHED` in flashnce/examples/wordnet.py; sources and caveats in "
              "docs/wordnet_published.md).", ""]
    for note in results.get("notes", []):
        lines += [note, ""]
    for r in runs:
        if r.get("eval_sampled"):
            lines += [f"{r['geometry']} d = {r['dim']}: the final mean rank / MAP are over "
                      f"{r['eval_nodes']} nodes ({r['eval_pairs']} pairs), a seeded random "
                      "sample of the nodes with an ancestor, each ranked exactly against all "
                      f"{results['data']['nodes']} nodes ({r['eval_s']:.0f} s; all nodes would "
                      f"take about {r['eval_s'] * results['data']['nodes'] / r['eval_nodes']:.0f}"
                      " s).", ""]
        if r.get("epochs_done", r["epochs"]) < r["epochs"]:
            lines += [f"{r['geometry']} d = {r['dim']}: training stopped by --max-train-s "
                      f"after {r['steps']} steps = {r['epochs_done']:.3f} epochs; s / epoch is "
                      "extrapolated from them.", ""]
        if r.get("curve"):
            c0 = r["curve"][0]
            which = ("a seeded random sample of the nodes with an ancestor, each ranked "
                     "against all nodes" if c0["nodes"] < results["data"]["nodes"] - 1
                     else "all nodes")
            lines += [f"Learning curve, {r['geometry']} d = {r['dim']}: evaluated on "
                      f"{c0['nodes']} nodes ({c0['pairs']} pairs; {which}).",
                      "", "| epoch | train s | loss | mean rank | MAP | eval s |",
                      "| --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {c['epoch']} | {c['train_s']:.0f} | {c['loss']:.4f} | "
                      f"{c['mean_rank']:.2f} | {c['map']:.4f} | {c['eval_s']:.0f} |"
                      for c in r["curve"]]
            lines.append("")
    (out / f"{stem}.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m flashnce.examples.wordnet",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--subset", choices=("mammals", "nouns"), default="mammals")
    p.add_argument("--geometry", nargs="+", default=["poincare"], choices=GEOMETRIES)
    p.add_argument("--dim", nargs="+", type=int, default=[10])
    p.add_argument("--epochs", type=int, default=None,
                   help="default: 100 (mammals), 5 (nouns)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="adam (tangent vectors / vectors), rowadam (Adam, one second moment "
                   "per row), sgd (plain SGD), rsgd "
                   "(poincare only: Riemannian SGD on ball points); default: rsgd for "
                   "poincare d = 2, adam otherwise")
    p.add_argument("--lr", type=float, default=None,
                   help="step on the batch-mean loss; default: 0.1 (adam), per optimizer "
                   "otherwise (DEFAULT_LR)")
    p.add_argument("--batch", type=int, default=256, help="closure pairs per step")
    p.add_argument("--burnin", type=int, default=None,
                   help="epochs at lr / 10 first; default 20 (rsgd), 10 otherwise")
    p.add_argument("--scale", type=float, default=None,
                   help="logit = -scale * distance; default: default_scale (4 for the "
                   "hyperbolic geometries with adam, 1 otherwise)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="learning curve: evaluate every this many epochs (0: only at the end)")
    p.add_argument("--eval-every-steps", type=int, default=0,
                   help="learning curve: evaluate every this many steps instead")
    p.add_argument("--max-train-s", type=float, default=None,
                   help="stop training after this many seconds (mid-epoch if need be)")
    p.add_argument("--final-sample", type=int, default=0,
                   help="the final evaluation on this many random nodes (0: all), a superset "
                   "of the --eval-sample ones")
    p.add_argument("--eval-sample", type=int, default=0,
                   help="curve points on this many random nodes (0: all)")
    p.add_argument("--name", default=None,
                   help="output stem (default wordnet_<subset>)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("wordnet-results"))
    p.add_argument("--wordnet-dir", default=None, help="WordNet dict folder")
    p.add_argument("--fresh", action="store_true",
                   help="start a new table instead of merging into an existing one")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = args.epochs if args.epochs is not None else (100 if args.subset == "mammals" else 5)
    t0 = time.perf_counter()
    try:
        h = load(args.subset, args.wordnet_dir)
    except WordNetMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    build_s = time.perf_counter() - t0
    print(f"{args.subset}: {h.num_nodes} nodes, {h.num_edges} closure pairs ({build_s:.1f} s)")
    from ..bench.report import environment
    env = environment("cpu")
    stem = args.name or f"wordnet_{args.subset}"
    path = args.out / f"{stem}.json"
    results = {"runs": []}
    if path.exists() and not args.fresh:
        results = json.loads(path.read_text())
    results.update(environment=env, threads=torch.get_num_threads(),
                   data={"subset": args.subset, "nodes": h.num_nodes, "edges": h.num_edges,
                         "build_s": build_s})
    for geometry in args.geometry:
        for dim in args.dim:
            optimizer = args.optimizer or default_optimizer(geometry, dim)
            if optimizer == "rsgd" and geometry != "poincare":
                optimizer = "adam"  # --optimizer rsgd applies to the Poincare runs only
            lr = args.lr if args.lr is not None else DEFAULT_LR[optimizer]
            burnin = args.burnin if args.burnin is not None else DEFAULT_BURNIN[optimizer]
            scale = (args.scale if args.scale is not None
                     else default_scale(geometry, optimizer, dim))
            curve, tstats, t_start = [], {}, time.perf_counter()
            # seeded node order for the sampled evaluations (nodes with an ancestor)
            has = torch.nonzero(h.indptr[1:] > h.indptr[:-1]).flatten()
            order = has[torch.randperm(has.numel(),
                                       generator=torch.Generator().manual_seed(args.seed + 2))]
            sample = order[:args.eval_sample] if args.eval_sample else None
            final_rows = order[:args.final_sample] if args.final_sample else None

            def evaluate(epoch, emb_now, loss, _g=geometry, _d=dim):
                te = time.perf_counter()
                m = reconstruction(emb_now, h, _g, rows=sample)
                curve.append({"epoch": round(epoch, 4), "train_s": te - t_start - sum(
                    c["eval_s"] for c in curve), "loss": loss, "mean_rank": m["mean_rank"],
                    "map": m["map"], "nodes": m["nodes"], "pairs": m["pairs"],
                    "eval_s": time.perf_counter() - te})
                print(f"  {_g} d={_d} epoch {epoch:.3f}: loss {loss:.4f} mean rank "
                      f"{m['mean_rank']:.3f} MAP {m['map']:.4f} ({m['nodes']} nodes, "
                      f"{curve[-1]['eval_s']:.0f} s)", flush=True)

            def callback(epoch, emb_now, loss):
                if args.eval_every_steps or (args.eval_every and
                                             round(epoch) % args.eval_every == 0):
                    evaluate(epoch, emb_now, loss)
            emb, losses, train_s = train(
                h, geometry, dim, epochs=epochs, lr=lr, batch=args.batch,
                burnin=burnin, scale=scale, seed=args.seed, optimizer=optimizer,
                progress=not args.no_progress,
                callback=callback if (args.eval_every or args.eval_every_steps) else None,
                callback_every_steps=args.eval_every_steps, max_train_s=args.max_train_s,
                stats=tstats)
            te = time.perf_counter()
            m = reconstruction(emb, h, geometry, rows=final_rows)
            eval_s = time.perf_counter() - te
            run = {"geometry": geometry, "dim": dim, "epochs": epochs,
                   "epochs_done": tstats["epochs_done"], "steps": tstats["steps"],
                   "optimizer": optimizer, "lr": lr,
                   "batch": args.batch, "burnin": burnin, "scale": scale,
                   "seed": args.seed, "threads": torch.get_num_threads(),
                   "mean_rank": m["mean_rank"], "map": m["map"], "eval_pairs": m["pairs"],
                   "final_loss": losses[-1], "losses": losses, "train_s": train_s,
                   "eval_s": eval_s, "eval_nodes": m["nodes"],
                   "eval_sampled": final_rows is not None, "curve": curve,
                   "max_tangent_norm": float(emb.norm(dim=1).max()),
                   "published": PUBLISHED.get((args.subset, geometry, dim))}
            print(f"{geometry:>11} d={dim:<3} mean rank {m['mean_rank']:.3f}  MAP "
                  f"{m['map']:.4f}  loss {losses[-1]:.4f}  train {train_s:.1f} s "
                  f"({train_s / max(epochs, 1):.3f} s/epoch)  eval {eval_s:.1f} s")
            results["runs"] = [r for r in results["runs"]
                               if (r["geometry"], r["dim"]) != (geometry, dim)] + [run]
            write_tables(results, args.out, args.subset, stem)
            if geometry == "poincare" and dim == 2:
                png = args.out / f"wordnet_{args.subset}_poincare_d2.png"
                plot_disk(emb, h, png, title=f"WordNet {args.subset}, Poincare d = 2: mean "
                          f"rank {m['mean_rank']:.2f}, MAP {m['map']:.3f} (flashnce full "
                          f"softmax)")
                print(f"wrote {png}")
    print(f"wrote {args.out / f'{stem}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
