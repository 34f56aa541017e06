"""Train a small two-tower model with flashnce on synthetic paired data, in any geometry.

Single process:
    python examples/train_two_tower.py --geometry lorentz --steps 30

Two CPU processes (gloo) with DistributedDataParallel; each rank holds its shard of the
global batch and the loss sees all of it (exact gradients, see flashnce.distributed):
    torchrun --nproc_per_node=2 examples/train_two_tower.py --geometry cosine --steps 30

Add ``--uneven`` to give the ranks different shard sizes and ``--group-mode ring`` for the
ring exchange. The printed loss is the global loss (mean over ranks of each rank's loss).

Data: a latent z ~ N(0, I_k) is seen by two "modalities" through fixed random linear maps
plus noise; the towers must learn to embed the pairs (a_i, b_i) close together.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn

import flashnce


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--geometry", default="cosine", choices=sorted(flashnce.GEOMETRIES))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (all ranks)")
    p.add_argument("--dim", type=int, default=32, help="embedding dim")
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--input-dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--scale-init", type=float, default=1 / 0.07)
    p.add_argument("--curvature-init", type=float, default=1.0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--group-mode", default="gather", choices=["gather", "ring"])
    p.add_argument("--uneven", action="store_true", help="uneven shard sizes across ranks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default; torchrun sets 1)")
    return p.parse_args()


class Tower(nn.Module):
    def __init__(self, d_in, hidden, d_out):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, x):
        return self.net(x)


class TwoTower(nn.Module):
    """Both towers and the loss (with its learnable scale / curvature) in one module, so DDP
    averages every gradient, the loss parameters' included."""

    def __init__(self, args, group):
        super().__init__()
        self.image = Tower(args.input_dim, args.hidden, args.dim)
        self.text = Tower(args.input_dim, args.hidden, args.dim)
        self.loss = flashnce.nn.ContrastiveLoss(
            geometry=args.geometry, scale_init=args.scale_init,
            curvature_init=args.curvature_init, group=group, backend=args.backend,
            group_mode=args.group_mode)

        # Unnormalised geometries get features scaled by 1/sqrt(dim), as EuCLIP's fixed
        # dim_scale and MERU's alpha initialisation do, so initial distances are O(1).
        self.feature_scale = 1.0 if args.geometry == "cosine" else args.dim ** -0.5

    def embed(self, a, b):
        return self.image(a) * self.feature_scale, self.text(b) * self.feature_scale

    def forward(self, a, b):
        return self.loss(*self.embed(a, b))


class PairedData:
    """Deterministic synthetic pairs: every rank regenerates the global batch of a step from
    the seed and keeps its rows (a real loader would use a DistributedSampler)."""

    def __init__(self, args):
        g = torch.Generator().manual_seed(args.seed)
        self.map_a = torch.randn(args.latent_dim, args.input_dim, generator=g)
        self.map_b = torch.randn(args.latent_dim, args.input_dim, generator=g)
        self.args = args

    def batch(self, step, n):
        g = torch.Generator().manual_seed(self.args.seed * 100003 + step + 1)
        z = torch.randn(n, self.args.latent_dim, generator=g)
        a = z @ self.map_a + self.args.noise * torch.randn(n, self.args.input_dim, generator=g)
        b = z @ self.map_b + self.args.noise * torch.randn(n, self.args.input_dim, generator=g)
        return a, b


def shard_sizes(total, world, uneven):
    if not uneven or world == 1:
        return [total // world + (r < total % world) for r in range(world)]
    weights = list(range(1, world + 1))  # rank r gets a share proportional to r + 1
    sizes = [max(1, total * w // sum(weights)) for w in weights]
    sizes[-1] += total - sum(sizes)
    return sizes


def main():
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    group = None
    if world > 1:
        dist.init_process_group("gloo")
        group = dist.group.WORLD
    rank = dist.get_rank() if group is not None else 0
    torch.manual_seed(args.seed)  # same initial weights on every rank

    model = TwoTower(args, group)
    if group is not None:
        model = nn.parallel.DistributedDataParallel(model)
    core = model.module if group is not None else model
    # No weight decay on 0-d parameters (log-scale, log-curvature), as open_clip / MERU do.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)

    data = PairedData(args)
    sizes = shard_sizes(args.batch_size, world, args.uneven)
    lo = sum(sizes[:rank])
    if rank == 0:
        print(f"flashnce {flashnce.__version__}: geometry={args.geometry} world={world} "
              f"shards={sizes} group_mode={args.group_mode if group is not None else '-'}")
    t0 = time.perf_counter()
    for step in range(args.steps):
        a, b = data.batch(step, args.batch_size)
        loss = model(a[lo: lo + sizes[rank]], b[lo: lo + sizes[rank]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        core.loss.clamp_parameters()  # keep the logged values in range (forward clamps too)

        shown = loss.detach().clone()
        if group is not None:  # mean over ranks of the per-rank losses = the global loss
            dist.all_reduce(shown, group=group)
            shown /= world
        if rank == 0:
            extra = f"  scale {float(core.loss.scale.detach()):7.3f}"
            if flashnce.get_geometry(args.geometry).uses_curvature:
                extra += f"  curvature {float(core.loss.curvature.detach()):6.3f}"
            print(f"step {step:4d}  loss {float(shown):.4f}{extra}", flush=True)

    if rank == 0:
        with torch.no_grad():  # top-1 retrieval on a fresh batch, single process
            a, b = data.batch(10**6, 512)
            logits = flashnce.reference_logits(
                *core.embed(a, b), geometry=args.geometry,
                scale=core.loss.scale, curvature=core.loss.curvature)
            acc = (logits.argmax(1) == torch.arange(512)).float().mean()
        print(f"done in {time.perf_counter() - t0:.1f}s; held-out image->text top-1 "
              f"{float(acc):.3f} (chance {1 / 512:.3f})")
    if group is not None:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
