"""InfoNCE and SigLIP across ranks on torch.distributed, with exact gradients.

Each rank passes its local rows ``x_r [n_r, d]``, ``y_r [n_r, d]``; the global batch is their
concatenation in rank order (N = sum n_r). Rank r computes open_clip's "local loss": its rows
against all N columns and all N rows against its columns, through the same pairwise-LSE
primitive as the single-process loss (never an n_r x N tensor).

Gradient convention (the one DDP uses): gradients of replicated parameters are **averaged**
over ranks. Rank r returns

    loss_r = (W / N) * sum_{i in rank r} per_row_i        (reduction="mean"; W = world size)

so that mean_r loss_r equals the single-process loss on the concatenated batch, also for uneven
n_r (with equal n_r it is exactly open_clip's ``ClipLoss(local_loss=True,
gather_with_grad=True)``: a mean over local rows). Features are gathered with autograd, and the
gather's backward sums the gradients every rank's loss sends to a row, so that

    x_r.grad = sum_q d loss_q / d x_r = W * dL/dx_r,
    mean_r(scale.grad_r) = dL/dscale,   mean_r(curvature.grad_r) = dL/dcurvature,

i.e. after DDP averages the model's (and the scale's / curvature's) gradients over ranks, they
equal the single-process gradients. Per-rank scale / curvature gradients are partial sums;
only their mean is meaningful (which is all DDP uses). reduction="sum" returns
W * sum_{i in rank r} per_row_i (the mean over ranks is the global sum); reduction="none"
returns this rank's rows' per-row losses, each equal to that row's single-process value (to
keep the convention, reduce them as (W / N) * sum). To log the global loss, all-reduce the
returned loss and divide by W.

Modes (``group_mode``), with n = n_r, N = global batch, d = feature dim, W = world size:

* ``"gather"`` (default): all-gather the GEMM operands (the features) and per-row scalars
  of x and y, then run local rows x all columns (row LSE) and all rows x local columns (column
  LSE). Memory O(N d) per rank for the gathered copies; communication: one all-gather of
  2 N d elements forward and one reduce-scatter of the same size backward; compute 2 n N d
  (each rank also computes the unused LSE of each call: forward work only, its upstream
  gradient is zero).
* ``"ring"``: Inf-CL style. Column blocks (operand, scalars and a running column LSE) travel
  around the ring rank -> rank + 1; each rank folds its local rows x the visiting block into
  its row LSE and the block's column LSE. Backward passes the blocks again, carrying their
  gradient accumulators home. Memory O(n d) per rank (two blocks in flight), never O(N d);
  communication W point-to-point steps of n (d + r + 1) elements forward and about twice
  that backward (blocks travel in the compute dtype: fp32 for bf16 / fp16 inputs); compute
  n N d forward, 2 n N d backward. Steps are synchronous (no compute / communication overlap).

SigLIP (``flashnce.siglip(..., group=)``) follows the same convention: rank r returns
(W / N) * sum over its rows of sum_j -log sigmoid(z_ij l_ij) against all N columns. Its
statistic (``pair_sum``) has no column term, so only the columns travel: ``"gather"``
all-gathers y (and its labels) with autograd and runs the one-pass walk (gradients in the
forward) on local rows x all columns; ``"ring"`` passes the column blocks as above, each
block's gradient accumulators travelling with it and home after the last hop, computed in the
same pass as the sums (one ring pass, 3 GEMMs per block; the backward only scales them, so
every rank must backpropagate the loss it returned, as DDP does). Without gradients, or with
reduction="none", the ring runs its forward sums and recomputes in a second ring backward.
Memory O(n d) per rank at any world size. Labels with ``"ring"`` are not supported yet (they would have to travel with the
blocks): use ``"gather"``.

Uneven local batches are supported: a small handshake (one all-gather of a few integers per
rank, one host sync) exchanges sizes, dims, dtypes and whether each rank's inputs passed
validation. If any rank's inputs are invalid, or ranks disagree on the dim, the dtype or which
inputs require grad (the backward collectives must match), **every** rank raises before any
feature collective starts, so nothing hangs. Every rank needs >= 1 row. All ranks must then
call backward (as with any DDP loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import dispatch
from .core.autograd import scale_saved_gradients
from .core.numerics import MAX_RADIUS
from .core.problem import TileProblem, pair_sum_loss, per_row_losses
from .core.relation import Relation
from .core.stats import get_stat
from .validate import (REDUCTIONS, SUPPORTED_DTYPES, check_choice, check_features,
                       check_labels)

GROUP_MODES = ("gather", "ring")

_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True)
class Comm:
    """Who holds which rows of the global batch (agreed by the handshake)."""

    group: object
    rank: int
    world: int
    sizes: tuple  # rows per rank, rank order

    @property
    def n_local(self) -> int:
        return self.sizes[self.rank]

    @property
    def offset(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def even(self) -> bool:
        return len(set(self.sizes)) == 1

    def peer(self, group_rank: int) -> int:
        """Global rank of a rank in the group (P2P ops address global ranks)."""
        return dist.get_global_rank(self.group, group_rank % self.world)


def check_group(group):
    """The process group as given, after checking torch.distributed is up."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("group= needs torch.distributed to be initialised "
                           "(torch.distributed.init_process_group)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup (e.g. "
                        f"torch.distributed.group.WORLD), got {type(group).__name__}")
    return group


# --------------------------------------------------------------------------------------------
# Row gather with autograd: all-gather forward, reduce-scatter (sum) backward.
# --------------------------------------------------------------------------------------------


def gather_rows(t: torch.Tensor, comm: Comm) -> torch.Tensor:
    """[n_r, ...] on every rank -> [N, ...] (rank order) on every rank, no autograd."""
    t = t.contiguous()
    rest = tuple(t.shape[1:])
    if comm.even:
        out = t.new_empty((comm.total, *rest))
        _all_gather(out, t, group=comm.group)
        return out
    n_max = max(comm.sizes)
    buf = t.new_zeros((n_max, *rest))
    buf[: t.shape[0]] = t
    out = t.new_empty((comm.world * n_max, *rest))
    _all_gather(out, buf, group=comm.group)
    return torch.cat([out[r * n_max: r * n_max + n] for r, n in enumerate(comm.sizes)])


def reduce_scatter_rows(g: torch.Tensor, comm: Comm) -> torch.Tensor:
    """[N, ...] on every rank -> [n_r, ...]: this rank's rows summed over all ranks."""
    g = g.contiguous()
    rest = tuple(g.shape[1:])
    if comm.even:
        out = g.new_empty((comm.n_local, *rest))
        _reduce_scatter(out, g, group=comm.group)
        return out
    n_max = max(comm.sizes)
    buf = g.new_zeros((comm.world, n_max, *rest))
    for r, (lo, n) in enumerate(_spans(comm.sizes)):
        buf[r, :n] = g[lo: lo + n]
    out = g.new_empty((n_max, *rest))
    _reduce_scatter(out, buf.reshape(comm.world * n_max, *rest), group=comm.group)
    return out[: comm.n_local]


def _spans(sizes):
    lo = 0
    for n in sizes:
        yield lo, n
        lo += n


class _GatherRows(torch.autograd.Function):
    """all_gather whose backward sums each row's gradient over the ranks (reduce-scatter)."""

    @staticmethod
    def forward(ctx, t, comm):
        ctx.comm = comm
        return gather_rows(t, comm)

    @staticmethod
    def backward(ctx, g):
        return reduce_scatter_rows(g, ctx.comm), None


def all_gather_with_grad(t: torch.Tensor, comm: Comm) -> torch.Tensor:
    """Rows of every rank concatenated; gradients flow back to each rank's own rows, summed
    over the ranks' losses. Empty trailing dims (no per-row scalars) need no collective."""
    if t.dim() == 2 and t.shape[1] == 0:
        return t.new_zeros((comm.total, 0))
    return _GatherRows.apply(t, comm)


# --------------------------------------------------------------------------------------------
# The ring (Inf-CL style), generic over the stat: column blocks travel rank -> rank + 1.
# --------------------------------------------------------------------------------------------


def _pack(parts):
    """One flat buffer holding each part's elements back to back (so the receiver's parts are
    views of its buffer, not copies)."""
    return torch.cat([p.reshape(-1) for p in parts])


def _unpack(flat, n, widths):
    """Views [n, w] of consecutive spans of ``flat`` (no copies)."""
    return [t.view(n, w) for t, w in zip(flat.split([n * w for w in widths]), widths)]


def _shift(comm: Comm, parts, src_rows: int, widths):
    """Send ``parts`` (rows x widths, compute dtype) to rank + 1; receive rank - 1's block
    (``src_rows`` rows) in the same layout."""
    flat = _pack(parts)
    recv = flat.new_empty(src_rows * sum(widths))
    ops = [dist.P2POp(dist.isend, flat, comm.peer(comm.rank + 1), comm.group),
           dist.P2POp(dist.irecv, recv, comm.peer(comm.rank - 1), comm.group)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    return _unpack(recv, src_rows, widths)


RING_RELATIONS = ("none", "diagonal")  # relations whose index data need not travel


def _ring_gradients(comm: Comm, x, y, alpha, beta, theta, tspec, block_grads, carried=()):
    """The gradient-carrying ring: y's column block (operand, row scalars and the per-column
    vectors ``carried``) travels rank -> rank + 1 with its dY / d_beta accumulators; at each
    step ``block_grads(y_b, beta_b, step_spec, carried_b)`` returns this rank's partials
    (dx, dy, d_alpha, d_beta, d_theta) for the visiting block, and after the last hop each
    block's accumulators are home. Returns (dX, dY, d_alpha, d_beta, d_theta) in the compute
    dtype (dX, dY in the input dtype)."""
    cd = alpha.dtype
    w, d, r = comm.world, y.shape[1], beta.shape[1]
    starts = [sum(comm.sizes[:q]) for q in range(w)]
    dx = torch.zeros(x.shape, dtype=cd, device=x.device)
    d_alpha, d_theta = torch.zeros_like(alpha), torch.zeros_like(theta)
    y_b, beta_b, carried = y, beta, list(carried)
    dy_b = torch.zeros(y.shape, dtype=cd, device=y.device)
    dbeta_b = torch.zeros_like(beta)
    for step in range(w):
        owner = (comm.rank - step) % w
        step_spec = tspec.shifted(starts[comm.rank], starts[owner])
        dx_p, dy_p, da_p, db_p, dt_p = block_grads(y_b, beta_b, step_spec, carried)
        dx += dx_p.to(cd)
        d_alpha += da_p
        d_theta += dt_p
        dy_b += dy_p.to(cd)
        dbeta_b += db_p
        if w == 1:
            break
        src = comm.sizes[(owner - 1) % w]
        if step < w - 1:
            y_b, beta_b, dy_b, dbeta_b, *carried = _shift(
                comm, [y_b.to(cd), beta_b, dy_b, dbeta_b, *carried], src,
                [d, r, d, r, *([1] * len(carried))])
            y_b = y_b.to(x.dtype)
            carried = [c.reshape(-1) for c in carried]
        else:  # last hop: the block's finished gradients go home
            dy_b, dbeta_b = _shift(comm, [dy_b, dbeta_b], src, [d, r])
    return dx.to(x.dtype), dy_b.to(y.dtype), d_alpha, dbeta_b, d_theta


class _RingStat(torch.autograd.Function):
    """(row_stat [n_r], col_stat [n_r]) of local rows / local columns against the global
    batch, for any stat: the visiting block's partial states merge by the stat's merge rule."""

    @staticmethod
    def forward(ctx, x, y, alpha, beta, theta, tspec, impl, comm):
        stat = get_stat(tspec.stat)
        cd = alpha.dtype
        w, d, r = comm.world, y.shape[1], beta.shape[1]
        starts = [sum(comm.sizes[:q]) for q in range(w)]
        row = stat.identity(x.shape[0], cd, x.device)
        y_b, beta_b = y, beta
        col_b = stat.identity(y.shape[0], cd, x.device)
        for step in range(w):
            owner = (comm.rank - step) % w
            step_spec = tspec.shifted(starts[comm.rank], starts[owner])
            r_part, c_part = impl.forward_raw(x, y_b, alpha, beta_b, theta, step_spec)
            row = stat.merge(row, r_part)
            col_b = stat.merge(col_b, c_part)
            src = comm.sizes[(owner - 1) % w]
            if w == 1:
                break
            if step < w - 1:
                y_b, beta_b, col_b = _shift(comm, [y_b.to(cd), beta_b, col_b], src, [d, r, 1])
                y_b = y_b.to(x.dtype)
                col_b = col_b.reshape(-1)
            else:  # last hop: only the finished column stat goes home
                (col_b,) = _shift(comm, [col_b], src, [1])
                col_b = col_b.reshape(-1)
        ctx.save_for_backward(x, y, alpha, beta, theta, row, col_b)
        ctx.tspec, ctx.impl, ctx.comm = tspec, impl, comm
        ctx.set_materialize_grads(False)
        return row, col_b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_row, g_col):
        x, y, alpha, beta, theta, row_stat, col_stat = ctx.saved_tensors
        g_row = torch.zeros_like(row_stat) if g_row is None else g_row.contiguous()
        g_col = torch.zeros_like(col_stat) if g_col is None else g_col.contiguous()

        def block_grads(y_b, beta_b, step_spec, carried):
            col_b, gcol_b = carried  # the visiting block's column stat and its gradient
            return ctx.impl.backward_raw(x, y_b, alpha, beta_b, theta, step_spec, row_stat,
                                         col_b, g_row, gcol_b)

        grads = _ring_gradients(ctx.comm, x, y, alpha, beta, theta, ctx.tspec, block_grads,
                                (col_stat, g_col))
        return (*grads, None, None, None)


class _RingRowSum(torch.autograd.Function):
    """sum of the local rows' row_stat against the global batch, for a stat with a local G
    (``pair_sum``), in one ring pass: each visiting block gets its gradient partials in the
    same walk (``forward_grad_raw``), and they travel with it, home after the last hop. The
    backward only scales the saved gradients by its upstream gradient, which must be the same
    on every rank (it is under the DDP convention: every rank backpropagates its returned
    loss); the gradients a rank returns for its columns were accumulated with unit weight by
    every rank. Memory O(n d) per rank at any world size."""

    @staticmethod
    def forward(ctx, x, y, alpha, beta, theta, tspec, impl, comm):
        totals = []

        def block_grads(y_b, beta_b, step_spec, carried):
            row, _, *grads = impl.forward_grad_raw(x, y_b, alpha, beta_b, theta, step_spec)
            totals.append(row.sum())
            return grads

        ctx.save_for_backward(*_ring_gradients(comm, x, y, alpha, beta, theta, tspec,
                                               block_grads))
        return torch.stack(totals).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return (*scale_saved_gradients(ctx, g), None, None, None)


class _Ring:
    """The ring seen as a backend by ``core.problem.pair_sum_loss``: ``tile_stat`` is the
    two-pass ring (forward sums, recomputed backward), ``row_sum`` the one-pass ring."""

    def __init__(self, impl, comm: Comm):
        self.impl, self.comm = impl, comm

    def tile_stat(self, x, y, alpha, beta, theta, tspec):
        return _RingStat.apply(x, y, alpha, beta, theta, tspec, self.impl, self.comm)

    def row_sum(self, x, y, alpha, beta, theta, tspec):
        return _RingRowSum.apply(x, y, alpha, beta, theta, tspec, self.impl, self.comm)


# --------------------------------------------------------------------------------------------
# The distributed InfoNCE.
# --------------------------------------------------------------------------------------------


def _dtype_code(t) -> int:
    return SUPPORTED_DTYPES.index(t.dtype) if t.dtype in SUPPORTED_DTYPES else -1


def _grad_mask(x, y, prob) -> int:
    """Which inputs need gradients (and whether autograd is on): the backward collectives
    run only if this agrees across ranks."""
    flags = (torch.is_grad_enabled(), x.requires_grad, y.requires_grad,
             prob.scale.requires_grad, prob.geo.uses_curvature and prob.curvature.requires_grad,
             prob.bias.requires_grad)
    return sum(int(bool(f)) << k for k, f in enumerate(flags))


def _handshake(group, x, y, targets, error, grad_mask,
               targets_name="targets (global column indices)"):
    """One all-gather of [ok, n_x, n_y, d, dtype, targets min, targets max, grad mask] per
    rank; raise on every rank if any rank failed validation or the ranks disagree (targets
    must be global indices into the concatenated y; ``targets_name`` names them in the error).
    Returns the Comm of the x rows and the y sizes per rank."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    ok = error is None
    has_t = ok and targets is not None and targets.numel() > 0
    meta = [int(ok),
            x.shape[0] if ok else 0, y.shape[0] if ok else 0, x.shape[1] if ok else 0,
            _dtype_code(x) if ok else -1,
            int(targets.min()) if has_t else 0, int(targets.max()) if has_t else -1,
            grad_mask]
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    mine = torch.tensor(meta, dtype=torch.int64, device=device)
    everyone = mine.new_empty((world * len(meta),))
    _all_gather(everyone, mine, group=group)
    rows = everyone.view(world, len(meta)).tolist()
    bad = [q for q, row in enumerate(rows) if not row[0]]
    if bad:
        if error is not None:
            raise error
        raise RuntimeError(f"flashnce (group=...): rank(s) {bad} rejected their inputs "
                           f"(see the error on those ranks); no feature collective was started")
    dims = {row[3] for row in rows}
    dtypes = {row[4] for row in rows}
    if len(dims) > 1 or len(dtypes) > 1:
        raise ValueError(
            "all ranks must pass features of the same dim and dtype; got (dim, dtype) per rank: "
            + ", ".join(f"{row[3]}/{SUPPORTED_DTYPES[row[4]]}" for row in rows))
    if len({row[7] for row in rows}) > 1:
        raise ValueError(
            "ranks disagree on which inputs require grad (x, y, scale, curvature, bias) or on "
            "torch.is_grad_enabled(); the backward collectives would hang. Per-rank bit masks "
            "(grad_enabled, x, y, scale, curvature, bias): " + ", ".join(
                format(row[7], "06b")[::-1] for row in rows))
    comm = Comm(group, rank, world, tuple(row[1] for row in rows))
    m_total = sum(row[2] for row in rows)
    for q, row in enumerate(rows):
        if row[6] >= 0 and (row[5] < 0 or row[6] >= m_total):
            raise ValueError(f"{targets_name} must be in [0, {m_total}); rank {q} passed "
                             f"values in [{row[5]}, {row[6]}]")
    return comm, tuple(row[2] for row in rows)


def _check_local(x, y, symmetric, targets, mode):
    check_features(x, y)
    n, m = x.shape[0], y.shape[0]
    if symmetric:
        if targets is not None:
            raise ValueError("targets are only used with symmetric=False")
        if n != m:
            raise ValueError(f"symmetric InfoNCE needs as many x rows as y rows on each rank, "
                             f"got {n} and {m}")
        return
    if targets is None:
        if n != m:
            raise ValueError(f"without targets, row i's positive is column i of the global "
                             f"batch, which needs x and y sharded alike (equal local rows); "
                             f"got {n} and {m}")
        return
    if mode != "gather":
        raise ValueError("explicit targets with group= need group_mode='gather'")
    if not isinstance(targets, torch.Tensor) or targets.dtype != torch.int64:
        raise TypeError("targets must be an int64 tensor of global column indices")
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
    if targets.device != x.device:
        raise ValueError(f"targets are on {targets.device} but x is on {x.device}")


def distributed_infonce(x, y, *, group, group_mode, geometry, scale, curvature, on_manifold,
                        symmetric, targets, reduction, backend, max_radius=MAX_RADIUS,
                        margin=None):
    """``flashnce.infonce(..., group=...)``; see the module docstring for the convention."""
    check_group(group)
    error, prob, impl, grad_mask = None, None, None, 0
    # As in the single-process loss, the walk skips the positives (global diagonal, or the
    # global targets) and each row's loss is softplus(lse_neg - l_pos).
    relation = Relation.diagonal(skip_positives=True)
    try:
        dispatch.check_backend_name(backend)
        check_choice(reduction, "reduction", REDUCTIONS)
        check_choice(group_mode, "group_mode", GROUP_MODES)
        if not isinstance(symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
        _check_local(x, y, symmetric, targets, group_mode)
        if targets is not None:
            relation = Relation.targets(targets, skip_positives=True)
        # Without targets the positives (x_i, y_i) are local rows: feature_stats gives their
        # dots, and their gradients join the kernel's dX / dY in place.
        prob = TileProblem(x, y, geometry, scale, curvature, on_manifold, features_checked=True,
                           with_positives=targets is None, max_radius=max_radius)
        impl = dispatch.select_backend(backend, prob.x_op, prob.y_op, prob.tspec(relation))
        grad_mask = _grad_mask(x, y, prob)
    except Exception as exc:  # re-raised on this rank after the handshake: no hang
        error = exc
    comm, y_sizes = _handshake(group, x, y, targets, error, grad_mask)

    tspec = prob.tspec(relation)
    if group_mode == "ring":
        row_lse, col_lse = _RingStat.apply(
            prob.x_op.contiguous(), prob.y_op.contiguous(), prob.x_scalars.contiguous(),
            prob.y_scalars.contiguous(), prob.theta, tspec, impl, comm)
    else:
        y_comm = comm if symmetric else Comm(group, comm.rank, comm.world, y_sizes)
        y_all = all_gather_with_grad(prob.y_op, y_comm)
        b_all = all_gather_with_grad(prob.y_scalars, y_comm)
        # Local rows start at global row comm.offset; the gathered columns at 0.
        row_lse, _ = impl.tile_stat(prob.x_op, y_all, prob.x_scalars, b_all, prob.theta,
                                    tspec.shifted(comm.offset, 0))
        if symmetric:
            x_all = all_gather_with_grad(prob.x_op, comm)
            a_all = all_gather_with_grad(prob.x_scalars, comm)
            _, col_lse = impl.tile_stat(x_all, prob.y_op, a_all, prob.y_scalars, prob.theta,
                                        tspec.shifted(0, comm.offset))
        else:
            col_lse = None

    if targets is not None:  # gather mode only (checked): positives among the gathered columns
        positive = prob.logits_of_pairs(prob.x_op, y_all[targets], prob.x_scalars,
                                        b_all[targets], margin)
    else:
        positive = prob.positive_logits(margin)
    return ddp_reduce(per_row_losses(row_lse, col_lse, positive, symmetric), comm, reduction)


def ddp_reduce(per_row, comm: Comm, reduction: str):
    """A rank's per-row losses under the DDP convention: "mean" (W / N) * sum, "sum" W * sum,
    "none" the rows themselves. The mean over ranks of the returned losses is then the global
    loss (DDP averages gradients)."""
    if reduction == "none":
        return per_row
    factor = comm.world / comm.total if reduction == "mean" else float(comm.world)
    return per_row.sum() * factor


# --------------------------------------------------------------------------------------------
# The distributed SigLIP.
# --------------------------------------------------------------------------------------------


def distributed_siglip(x, y, *, group, group_mode, geometry, scale, bias, labels, curvature,
                       on_manifold, reduction, backend, max_radius=MAX_RADIUS):
    """``flashnce.siglip(..., group=...)``; see the module docstring for the convention."""
    check_group(group)
    error, prob, impl, grad_mask, relation = None, None, None, 0, Relation.diagonal()
    try:
        dispatch.check_backend_name(backend)
        check_choice(reduction, "reduction", REDUCTIONS)
        check_choice(group_mode, "group_mode", GROUP_MODES)
        check_features(x, y)
        labels = check_labels(labels, x.shape[0], y.shape[0], x.device)
        if labels is None and x.shape[0] != y.shape[0]:
            raise ValueError(f"SigLIP's positives (x_i, y_i) need as many x rows as y rows on "
                             f"each rank, got {x.shape[0]} and {y.shape[0]}")
        if labels is not None and group_mode == "ring":
            raise ValueError("labels with group= need group_mode='gather' (labels do not "
                             "travel around the ring yet)")
        prob = TileProblem(x, y, geometry, scale, curvature, on_manifold, bias=bias,
                           features_checked=True, max_radius=max_radius)
        if labels is not None:
            relation = Relation.labels(*labels)
        impl = dispatch.select_backend(backend, prob.x_op, prob.y_op,
                                       prob.tspec(relation, "pair_sum"))
        grad_mask = _grad_mask(x, y, prob)
    except Exception as exc:  # re-raised on this rank after the handshake: no hang
        error = exc
    comm, y_sizes = _handshake(group, x, y, None, error, grad_mask)
    # mean over ranks of the returned losses = the global loss (N = global rows).
    factor = float(comm.world)
    if group_mode == "ring":
        return pair_sum_loss(
            _Ring(impl, comm), prob.x_op.contiguous(), prob.y_op.contiguous(),
            prob.x_scalars.contiguous(), prob.y_scalars.contiguous(), prob.theta,
            prob.tspec(relation, "pair_sum"), reduction, rows=comm.total, factor=factor)
    y_comm = Comm(group, comm.rank, comm.world, y_sizes)
    y_all = all_gather_with_grad(prob.y_op, y_comm)
    b_all = all_gather_with_grad(prob.y_scalars, y_comm)
    if labels is None:  # local rows start at global row comm.offset, the columns at 0
        tspec = prob.tspec(relation, "pair_sum").shifted(comm.offset, 0)
    else:
        tspec = prob.tspec(Relation.labels(labels[0], gather_rows(labels[1], y_comm)),
                           "pair_sum")
    return pair_sum_loss(impl, prob.x_op, y_all, prob.x_scalars, b_all, prob.theta, tspec,
                         reduction, rows=comm.total, factor=factor)


# --------------------------------------------------------------------------------------------
# Generic helpers for the same-set losses and Wang & Isola's terms (group=): a differentiable
# all-reduce (alignment's global sum). Added for ntxent / uniformity / alignment(group=).
# --------------------------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """sum over ranks of ``t``, the same on every rank. Every rank returns (a function of)
    the global sum, so the gradient reaching rank r's ``t`` is the sum over ranks of the
    upstream gradients: the backward all-reduces them too."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        out = t.detach().clone().contiguous()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        g = g.detach().clone().contiguous()
        dist.all_reduce(g, group=ctx.group)
        return g, None


def all_reduce_with_grad(t: torch.Tensor, group) -> torch.Tensor:
    """sum_r t_r on every rank; d/dt_r of sum_q f(out_q) = sum_q f'(out_q) (all-reduced)."""
    return _AllReduceSum.apply(t, group)


def grad_mask_of(x, y, scale=None, curvature=None, bias=None) -> int:
    """``_grad_mask``'s bits (grad enabled, x, y, scale, curvature, bias) for a loss without
    a TileProblem; a missing parameter does not require grad."""
    flags = (torch.is_grad_enabled(), x.requires_grad, y.requires_grad,
             *(p is not None and p.requires_grad for p in (scale, curvature, bias)))
    return sum(int(bool(f)) << k for k, f in enumerate(flags))
