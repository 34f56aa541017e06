"""WordNet noun-hierarchy embeddings with flashnce's full softmax (Nickel & Kiela 2017).

    python -m flashnce.examples.wordnet --subset mammals --geometry poincare --dim 10
    python -m flashnce.examples.wordnet --subset mammals --geometry poincare lorentz \\
        sqeuclidean --dim 2 5 10 20 --threads 1 --out bench/results

Data (read locally, nothing is downloaded): WordNet 3.0 from Debian's ``wordnet-base``
(``apt-get install -y wordnet-base``: /usr/share/wordnet) read with nltk's WordNet reader
(``pip install nltk``). The relation is the transitive closure of hypernym edges built as
Nickel & Kiela build it (facebookresearch/poincare-embeddings, wordnet/transitive_closure.py:
every noun synset -> each hypernym in its hypernym closure, every instance -> its instance
hypernyms and their hypernym closures); "mammals" keeps the pairs with both ends in
{mammal.n.01} + its descendants, minus those whose child is tusker.n.01 or female_mammal.n.01
(the rows their wordnet/mammals_filter.txt removes; its other patterns never match there).
This gives their sizes: 1180 nodes / 6540 pairs (mammals), 82115 / 743086 (all nouns).

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

from .hierarchy import Hierarchy, batch_exclude, reconstruction, subtree, transitive_closure

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

# Published numbers go here only with a source that was read (see the module README notes);
# {(subset, geometry, dim): {"mean_rank": .., "map": .., "source": ".."}}.
PUBLISHED: dict = {}


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
        return transitive_closure(noun_direct_edges(wn))
    h = transitive_closure(subtree_direct_edges(wn, "mammal.n.01"))
    return subtree(h, "mammal.n.01", drop_children=MAMMAL_DROP_CHILDREN)


# --------------------------------------------------------------------------- training


def init_embeddings(n: int, dim: int, seed: int = 0, init: float = 1e-3) -> torch.nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter((torch.rand(n, dim, generator=g) * 2 - 1) * init)


def loss_on(emb: torch.Tensor, h: Hierarchy, edges: torch.Tensor, geometry: str,
            scale: float = 1.0) -> torch.Tensor:
    """Mean full-softmax InfoNCE loss of closure pairs ``edges`` [B, 2] (all nodes compete)."""
    import flashnce
    u, v = edges[:, 0], edges[:, 1]
    return flashnce.infonce(emb[u], emb, symmetric=False, targets=v,
                            exclude=batch_exclude(h, u), geometry=geometry, scale=scale)


def train(h: Hierarchy, geometry: str, dim: int, *, epochs: int, lr: float, batch: int,
          burnin: int = 10, burnin_factor: float = 0.1, scale: float = 1.0, seed: int = 0,
          progress: bool = True, log=print):
    """Adam on the free embeddings; returns (emb [N, d], per-epoch losses, seconds)."""
    import flashnce
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    emb = init_embeddings(h.num_nodes, dim, seed)
    opt = torch.optim.Adam([emb], lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    hyperbolic = geometry in ("poincare", "lorentz")
    losses = []
    bar = _progress(range(epochs), f"{geometry} d={dim}", progress)
    t0 = time.perf_counter()
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = lr * (burnin_factor if epoch < burnin else 1.0)
        perm = h.edges[torch.randperm(h.num_edges, generator=g)]
        total = 0.0
        for start in range(0, h.num_edges, batch):
            e = perm[start:start + batch]
            loss = loss_on(emb, h, e, geometry, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hyperbolic:
                with torch.no_grad():
                    flashnce.project_radius_(emb.data, geometry=geometry)
            total += float(loss.detach()) * e.shape[0]
        losses.append(total / h.num_edges)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        elif progress:
            log(f"  {geometry} d={dim} epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f} "
                f"({time.perf_counter() - t0:.1f} s)")
    return emb.detach(), losses, time.perf_counter() - t0


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


def write_tables(results: dict, out: Path, subset: str):
    """Write wordnet_<subset>.json and .md (runs sorted by geometry, then dim)."""
    out.mkdir(parents=True, exist_ok=True)
    order = {g: i for i, g in enumerate(GEOMETRIES)}
    runs = sorted(results["runs"], key=lambda r: (order.get(r["geometry"], 9), r["dim"]))
    results["runs"] = runs
    (out / f"wordnet_{subset}.json").write_text(json.dumps(results, indent=2) + "\n")
    env = results["environment"]
    lines = [f"# WordNet {subset}: reconstruction with flashnce's full softmax",
             "",
             f"{results['data']['nodes']} nodes, {results['data']['edges']} closure pairs "
             f"(built in {results['data']['build_s']:.1f} s). Each pair (u, v) is a one-way "
             "InfoNCE row over all nodes, u and u's other ancestors excluded; Adam on tangent "
             "vectors (hyperbolic) / vectors (sqeuclidean). Mean rank and MAP as Nickel & "
             "Kiela's hype/graph.py eval_reconstruction.",
             "",
             f"CPU: {env.get('cpu_model')}, torch {env.get('torch_version')}, threads "
             f"{results['threads']}, git {str(env.get('git_sha'))[:12]}"
             f"{' (dirty)' if env.get('git_dirty') else ''}.",
             "",
             "| geometry | dim | epochs | lr | batch | mean rank | MAP | paper mean rank | "
             "paper MAP | final loss | train s | s / epoch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        pub = r.get("published") or {}
        lines.append(
            f"| {r['geometry']} | {r['dim']} | {r['epochs']} | {r['lr']:g} | {r['batch']} | "
            f"{r['mean_rank']:.3f} | {r['map']:.3f} | {pub.get('mean_rank', '')} | "
            f"{pub.get('map', '')} | {r['final_loss']:.4f} | {r['train_s']:.1f} | "
            f"{r['train_s'] / max(r['epochs'], 1):.3f} |")
    lines += ["", "Paper columns: left blank unless the number was read from a cited source "
              "(`source` in the JSON).", ""]
    (out / f"wordnet_{subset}.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m flashnce.examples.wordnet",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--subset", choices=("mammals", "nouns"), default="mammals")
    p.add_argument("--geometry", nargs="+", default=["poincare"], choices=GEOMETRIES)
    p.add_argument("--dim", nargs="+", type=int, default=[10])
    p.add_argument("--epochs", type=int, default=None,
                   help="default: 100 (mammals), 5 (nouns)")
    p.add_argument("--lr", type=float, default=0.1, help="Adam learning rate")
    p.add_argument("--batch", type=int, default=256, help="closure pairs per step")
    p.add_argument("--burnin", type=int, default=10, help="epochs at lr / 10 first")
    p.add_argument("--scale", type=float, default=1.0, help="logit = -scale * distance")
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
    path = args.out / f"wordnet_{args.subset}.json"
    results = {"runs": []}
    if path.exists() and not args.fresh:
        results = json.loads(path.read_text())
    results.update(environment=env, threads=torch.get_num_threads(),
                   data={"subset": args.subset, "nodes": h.num_nodes, "edges": h.num_edges,
                         "build_s": build_s})
    for geometry in args.geometry:
        for dim in args.dim:
            emb, losses, train_s = train(
                h, geometry, dim, epochs=epochs, lr=args.lr, batch=args.batch,
                burnin=args.burnin, scale=args.scale, seed=args.seed,
                progress=not args.no_progress)
            te = time.perf_counter()
            m = reconstruction(emb, h, geometry)
            eval_s = time.perf_counter() - te
            run = {"geometry": geometry, "dim": dim, "epochs": epochs, "lr": args.lr,
                   "batch": args.batch, "burnin": args.burnin, "scale": args.scale,
                   "seed": args.seed, "threads": torch.get_num_threads(),
                   "mean_rank": m["mean_rank"], "map": m["map"], "eval_pairs": m["pairs"],
                   "final_loss": losses[-1], "losses": losses, "train_s": train_s,
                   "eval_s": eval_s, "max_tangent_norm": float(emb.norm(dim=1).max()),
                   "published": PUBLISHED.get((args.subset, geometry, dim))}
            print(f"{geometry:>11} d={dim:<3} mean rank {m['mean_rank']:.3f}  MAP "
                  f"{m['map']:.4f}  loss {losses[-1]:.4f}  train {train_s:.1f} s "
                  f"({train_s / max(epochs, 1):.3f} s/epoch)  eval {eval_s:.1f} s")
            results["runs"] = [r for r in results["runs"]
                               if (r["geometry"], r["dim"]) != (geometry, dim)] + [run]
            write_tables(results, args.out, args.subset)
            if geometry == "poincare" and dim == 2:
                png = args.out / f"wordnet_{args.subset}_poincare_d2.png"
                plot_disk(emb, h, png, title=f"WordNet {args.subset}, Poincare d = 2: mean "
                          f"rank {m['mean_rank']:.2f}, MAP {m['map']:.3f} (flashnce full "
                          f"softmax)")
                print(f"wrote {png}")
    print(f"wrote {args.out / f'wordnet_{args.subset}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
