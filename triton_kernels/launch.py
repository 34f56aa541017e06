"""Launchers of the tile kernels: options decoding, relation swap, configs, grids.

``tile_forward(x, y, alpha, beta, theta, relation, options, kappa)``
    -> (row_stat [N], col_stat [M0]) fp32 ([N, 2], [M0, 2] for masked_sum, as
    ``spec.state_shape`` gives): ``_tile_fwd_kernel`` on (X, Y) then on (Y[:M0], X).
``tile_backward(..., row_stat, col_stat, g_row, g_col)``
    -> (dX, dY, d_alpha, d_beta, d_theta [3]): ``_tile_bwd_kernel`` on (X, Y) then (Y, X);
    the saved statistics and the upstream gradients have the state's shape (row-major, made
    contiguous here);
    d_theta = (sum G h, scale sum G h / k for the hyperbolic kind else 0, sum G), from the
    first launch's per-row-block partials summed in a fixed order (no atomics).
``tile_forward_grad(x, y, alpha, beta, theta, relation, options, kappa)``
    -> (row_stat, col_stat, dX, dY, d_alpha, d_beta, d_theta): stats with a local G only
    (``spec.STAT_INFO[stat]["local_grad"]``; lse is refused): the statistics and the
    gradients for g_row = 1, g_col = 0 from ``_tile_bwd_kernel`` with ``FWD_GRAD`` on
    (X, Y) then (Y, X) -- two launches, where tile_forward + tile_backward take four.

The argument contract is ``flashnce.core.spec``'s. The swapped launch (rows are Y) sees the
relation swapped (``relation_pointers``): diag_offset -> -diag_offset, labels (a, b) -> (b, a),
csr -> its transposed t_* tensors, targets -> the same t with ``SWAPPED`` (t[col] == row).
``specialisation`` gives a launch's compile-time arguments; it is the only place they are
derived, so the ahead-of-time compile test enumerates exactly what the launchers issue.

Configs: hand-picked defaults per operand dtype (``DEFAULT_CONFIGS``), with smaller tiles
where those spill registers (``CONFIG_RULES``, by pass, stat, kind, dtype, the device's
architecture and relation; tests/test_triton_aot.py compiles them for sm_80 / sm_90 and
asserts zero spills). Setting
``FLASHNCE_TRITON_AUTOTUNE=1`` (read on every call) switches to ``triton.autotune`` over
``AUTOTUNE_*_CONFIGS``, keyed on power-of-two buckets of N and M plus K and the compile-time
flags (Triton adds the tensor dtypes to the key), so a new batch size inside a known bucket
reuses the tuned config instead of retuning.

TF32: fp32 operands use IEEE fp32 dot products unless the caller allows TF32 through
``torch.backends.cuda.matmul.allow_tf32`` (read per call). 16-bit operands always use tensor
cores with fp32 accumulation.
"""

from __future__ import annotations

import os

import torch
import triton
from torch.library import wrap_triton

from flashnce.core import spec

from .backward import _tile_bwd_kernel
from .forward import _tile_fwd_kernel

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover - every supported triton has it
    InterpretedFunction = ()

# Kernels decorated while TRITON_INTERPRET=1 run in the interpreter (CPU tensors, tests).
INTERPRETED = isinstance(_tile_fwd_kernel, InterpretedFunction)

AUTOTUNE_ENV = "FLASHNCE_TRITON_AUTOTUNE"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Per operand dtype: forward (BLOCK_A, BLOCK_B, BLOCK_K, warps, stages) and backward
# (BLOCK_A, BLOCK_B, BLOCK_K, BLOCK_D, warps, stages). 16-bit operands halve the bytes per
# element, so they take larger K chunks; the backward holds a [BLOCK_A, BLOCK_D] fp32
# accumulator besides the logit tile, so it uses smaller row blocks.
DEFAULT_CONFIGS = {
    torch.float32: dict(fwd=(64, 64, 32, 4, 2), bwd=(64, 64, 32, 128, 8, 1)),
    torch.bfloat16: dict(fwd=(128, 64, 64, 8, 3), bwd=(64, 64, 64, 128, 8, 2)),
    torch.float16: dict(fwd=(128, 64, 64, 8, 3), bwd=(64, 64, 64, 128, 8, 2)),
}

# Exceptions to DEFAULT_CONFIGS, for the specialisations whose default config spills
# registers (ptxas' report in tests/test_triton_aot.py, which asserts zero spill stores for
# the configs issued here): (pass, stat, kind, operand dtype, arch, relation) patterns, None
# matching anything, the first matching rule wins. arch is the device's major * 10 + minor.
# Backward / fwd_grad rules keep BLOCK_A >= _MIN_BWD_BLOCK_A (the theta partial buffer) and
# BLOCK_A = 64 (sm_90's wgmma takes 64-row tiles per warpgroup).
_16BIT = (torch.bfloat16, torch.float16)
_BWD = ("bwd", "fwd_grad")  # one kernel: the same config, so fwd_grad's gradients are bwd's
CONFIG_RULES: tuple = tuple(
    (dict(zip(("which", "stat", "kind", "dtype", "arch", "relation"), pattern)), config)
    for pattern, config in (
        # The csr relation's per-row index walk is the largest live set.
        (("bwd", "masked_sum", None, _16BIT, 80, "csr"), (64, 16, 32, 128, 8, 2)),
        ((_BWD, None, None, _16BIT, None, "csr"), (64, 16, 64, 128, 8, 2)),
        ((_BWD, None, ("euclidean", "sqeuclidean"), _16BIT, 80, None), (64, 32, 32, 128, 8, 2)),
        ((_BWD, None, None, _16BIT, None, None), (64, 32, 64, 128, 8, 2)),
        (("fwd", None, "hyperbolic", _16BIT, None, "csr"), (64, 32, 64, 8, 3)),
        (("fwd", None, "hyperbolic", _16BIT, 80, None), (64, 64, 64, 8, 3)),
        (("fwd", None, "hyperbolic", _16BIT, 90, "labels"), (64, 64, 64, 8, 3)),
        (("fwd", None, "hyperbolic", (torch.float32,), 80, None), (64, 64, 16, 8, 2)),
        (("fwd", None, "hyperbolic", (torch.float32,), None, None), (64, 64, 32, 8, 2)),
        ((_BWD, None, "hyperbolic", (torch.float32,), 80, None), (64, 16, 32, 128, 8, 1)),
        ((_BWD, None, "hyperbolic", (torch.float32,), None, None), (64, 32, 32, 128, 8, 1)),
    ))


def _rule_matches(pattern: dict, key: dict) -> bool:
    return all(want is None or key[field] == want
               or (isinstance(want, tuple) and key[field] in want)
               for field, want in pattern.items())


_KEYS = ["KEY_NA", "KEY_NB", "K", "KIND", "STAT", "RELATION", "SKIP_SELF", "SKIP_POSITIVES",
         "SWAPPED", "POSITIVES", "INPUT_PRECISION"]
AUTOTUNE_FWD_CONFIGS = [
    triton.Config(dict(BLOCK_A=ba, BLOCK_B=bb, BLOCK_K=bk), num_warps=w, num_stages=s)
    for ba, bb, bk, w, s in [
        (64, 64, 32, 4, 2), (64, 128, 32, 4, 3), (128, 64, 32, 8, 3),
        (128, 64, 64, 8, 3), (128, 128, 64, 8, 2), (64, 64, 64, 4, 3),
    ]
]
AUTOTUNE_BWD_CONFIGS = [
    triton.Config(dict(BLOCK_A=ba, BLOCK_B=bb, BLOCK_K=bk, BLOCK_D=bd), num_warps=w,
                  num_stages=s)
    for ba, bb, bk, bd, w, s in [
        (64, 64, 32, 128, 8, 1), (64, 64, 64, 128, 8, 2), (32, 64, 64, 128, 4, 2),
        (64, 32, 64, 64, 4, 2), (128, 64, 64, 64, 8, 2),
    ]
]
# The theta partial buffer is sized for the smallest row block any candidate uses, and
# zero-filled, so unused slots (a larger BLOCK_A) add nothing to the fixed-order sum.
_MIN_BWD_BLOCK_A = min(c.kwargs["BLOCK_A"] for c in AUTOTUNE_BWD_CONFIGS)

_autotuned: dict[str, object] = {}


def _autotuned_kernel(which: str):
    """The autotune wrapper, built on first use (building it costs nothing at import)."""
    if which not in _autotuned:
        if which == "fwd":
            _autotuned[which] = triton.autotune(AUTOTUNE_FWD_CONFIGS, key=_KEYS)(
                _tile_fwd_kernel)
        else:
            _autotuned[which] = triton.autotune(
                AUTOTUNE_BWD_CONFIGS, key=_KEYS + ["SPLIT_GP", "FWD_GRAD"],
                reset_to_zero=["PART"])(_tile_bwd_kernel)
    return _autotuned[which]


def autotune_enabled() -> bool:
    """FLASHNCE_TRITON_AUTOTUNE=1, read per call. Ignored under the interpreter: Triton's
    autotuner benchmarks on a GPU driver, which the interpreter does not have."""
    return os.environ.get(AUTOTUNE_ENV, "0") not in ("", "0") and not INTERPRETED


def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _block_k(bk: int, k: int) -> int:
    # tl.dot needs every dim >= 16; small d (e.g. 3) pads one chunk with zeros.
    return max(16, min(bk, triton.next_power_of_2(k)))


# The stats whose fold / G read the positive role of a pair, not only whether it is kept.
_READS_POSITIVES = frozenset({spec.stat_id("pair_sum"), spec.stat_id("masked_sum")})
PASSES = ("fwd", "bwd", "fwd_grad")


def has_fwd_grad(stat: int) -> bool:
    """Whether ``stat`` has the one-pass forward + gradient (its G is local to the pair)."""
    return bool(spec.STAT_INFO[spec.STATS[stat]]["local_grad"])


def check_fwd_grad(stat: int) -> None:
    if not has_fwd_grad(stat):
        raise ValueError(f"statistic {spec.STATS[stat]} has no one-pass gradient (its G "
                         f"depends on the finished statistics): use triton_tile_fwd then "
                         f"triton_tile_bwd")


def specialisation(which: str, kind: int, stat: int, relation: int, flags: int, swapped: bool,
                   dtype: torch.dtype, kappa: float) -> dict:
    """The compile-time arguments (less the block config) of one launch of ``which``
    ("fwd" / "bwd" / "fwd_grad": the backward kernel with FWD_GRAD). Flags that cannot matter
    are normalised away, so they do not multiply the compiled variants: SKIP_POSITIVES
    without positives, SWAPPED outside targets. POSITIVES (the walk computes the positive
    role) is derived here: a stat that reads it and a relation whose positives are kept."""
    if which not in PASSES:
        raise ValueError(f"unknown pass {which!r} (known: {', '.join(PASSES)})")
    name = spec.KINDS[kind]
    has_positives = relation != spec.relation_id("none")
    skip_positives = bool(flags & spec.FLAG_SKIP_POSITIVES) and has_positives
    meta = dict(
        KIND=kind, NR=spec.NUM_ROW_SCALARS[name], STAT=stat, RELATION=relation,
        SKIP_SELF=bool(flags & spec.FLAG_SKIP_SELF),
        SKIP_POSITIVES=skip_positives,
        SWAPPED=bool(swapped) and relation == spec.relation_id("targets"),
        POSITIVES=stat in _READS_POSITIVES and has_positives and not skip_positives,
        KAPPA=float(kappa), INPUT_PRECISION=_input_precision(dtype), UPCAST=INTERPRETED)
    if which != "fwd":
        if which == "fwd_grad":
            check_fwd_grad(stat)
        meta["FWD_GRAD"] = which == "fwd_grad"
        # Two-part g_p tile for cosine on 16-bit operands (see backward.py).
        meta["SPLIT_GP"] = name == "cosine" and dtype in (torch.bfloat16, torch.float16)
    return meta


def default_config(which: str, dtype: torch.dtype, stat=None, kind=None, arch=None,
                   relation=None):
    """The config a launch of ``which`` uses when none is given: the first ``CONFIG_RULES``
    entry matching (which, stat name, kind name, dtype, arch, relation name), else the dtype
    default. Off a GPU (arch None) only the rules that match any arch apply."""
    key = dict(which=which, dtype=dtype, arch=arch,
               stat=None if stat is None else spec.STATS[stat],
               kind=None if kind is None else spec.KINDS[kind],
               relation=None if relation is None else spec.RELATIONS[relation])
    for pattern, config in CONFIG_RULES:
        if _rule_matches(pattern, key):
            return config
    return DEFAULT_CONFIGS[dtype]["fwd" if which == "fwd" else "bwd"]


def block_config(which: str, dtype: torch.dtype, k: int, config=None, *, stat=None,
                 kind=None, arch=None, relation=None):
    """(block constexprs, num_warps, num_stages) of a launch: ``config`` ((BLOCK_A, BLOCK_B,
    BLOCK_K, warps, stages), plus BLOCK_D before warps for the backward and fwd_grad, which
    share a kernel and its configs) or ``default_config``'s (``arch``: the device's
    capability, major * 10 + minor; None off a GPU), with BLOCK_K / BLOCK_D clamped to K."""
    cfg = config or default_config(which, dtype, stat, kind, arch, relation)
    which = "fwd" if which == "fwd" else "bwd"
    if which == "fwd":
        ba, bb, bk, warps, stages = cfg
        return dict(BLOCK_A=ba, BLOCK_B=bb, BLOCK_K=_block_k(bk, k)), warps, stages
    ba, bb, bk, bd, warps, stages = cfg
    bd = max(16, min(bd, triton.next_power_of_2(k)))
    return dict(BLOCK_A=ba, BLOCK_B=bb, BLOCK_K=_block_k(bk, k), BLOCK_D=bd), warps, stages


def relation_pointers(relation: int, tensors, swapped: bool, dummy: torch.Tensor):
    """(R0, R1, R2) of a launch: the relation's tensors as the kernel side sees them."""
    tensors = list(tensors)
    if relation == spec.relation_id("labels") and swapped:
        tensors = tensors[::-1]
    elif relation == spec.relation_id("csr"):
        tensors = tensors[3:] if swapped else tensors[:3]
    tensors = tensors + [dummy] * (3 - len(tensors))
    return tuple(tensors[:3])


class Options:
    """The decoded options vector (layout in ``flashnce.core.spec``)."""

    def __init__(self, options, relation, m: int):
        if len(options) != spec.NUM_OPTIONS:
            raise ValueError(f"options must have {spec.NUM_OPTIONS} entries, got "
                             f"{len(options)}")
        self.kind, self.stat, self.relation, self.flags, self.diag_offset, self.cols_both = (
            int(options[i]) for i in (spec.OPT_KIND, spec.OPT_STAT, spec.OPT_RELATION,
                                      spec.OPT_FLAGS, spec.OPT_DIAG_OFFSET,
                                      spec.OPT_COLS_BOTH))
        if not 0 <= self.kind < len(spec.KINDS):
            raise ValueError(f"unknown kind id {self.kind}")
        if not 0 <= self.stat < len(spec.STATS):
            raise ValueError(f"unknown stat id {self.stat}")
        if not 0 <= self.relation < len(spec.RELATIONS):
            raise ValueError(f"unknown relation id {self.relation}")
        if self.flags & ~spec.ALL_FLAGS:
            raise ValueError(f"unknown flag bits in {self.flags}")
        if not 0 <= self.cols_both <= m:
            raise ValueError(f"cols_both must be in [0, M = {m}], got {self.cols_both}")
        want = len(spec.RELATION_TENSORS[spec.RELATIONS[self.relation]])
        if len(relation) != want:
            raise ValueError(f"relation {spec.RELATIONS[self.relation]!r} takes {want} index "
                             f"tensors, got {len(relation)}")

    def meta(self, which, swapped, dtype, kappa):
        return specialisation(which, self.kind, self.stat, self.relation, self.flags, swapped,
                              dtype, kappa)


def _arch(device: torch.device):
    """major * 10 + minor of a CUDA device (CONFIG_RULES' arch), None for any other device."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _launch(which, kernel_args, na, meta, dtype, k, grid_k, config):
    if autotune_enabled():
        def grid(m):
            rows = (triton.cdiv(na, m["BLOCK_A"]),)
            return rows + (triton.cdiv(k, m["BLOCK_D"]),) if grid_k else rows

        wrap_triton(_autotuned_kernel(which))[grid](*kernel_args, **meta)
        return
    blocks, warps, stages = block_config(
        "fwd_grad" if meta.get("FWD_GRAD") else which, dtype, k, config, stat=meta["STAT"],
        kind=meta["KIND"], arch=_arch(kernel_args[0].device), relation=meta["RELATION"])
    grid = (triton.cdiv(na, blocks["BLOCK_A"]),)
    if grid_k:
        grid = grid + (triton.cdiv(k, blocks["BLOCK_D"]),)
    kernel = _tile_fwd_kernel if which == "fwd" else _tile_bwd_kernel
    wrap_triton(kernel)[grid](*kernel_args, **meta, **blocks, num_warps=warps,
                              num_stages=stages)


def _state(stat: int, n: int, device) -> torch.Tensor:
    """An uninitialised fp32 state of n rows: [n], or [n, w] for a stat of w values."""
    return torch.empty(spec.state_shape(spec.STATS[stat], n), dtype=torch.float32,
                       device=device)


def _row_stat(a, b, sa, sb, theta, rel, na, off, meta, config):
    nb, k = b.shape[0], a.shape[1]
    out = _state(meta["STAT"], na, a.device)
    if na == 0:
        return out
    args = (a, b, sa, sb, theta, *rel, out, na, nb, k, a.stride(0), b.stride(0), off,
            _bucket(na), _bucket(nb))
    _launch("fwd", args, na, meta, a.dtype, k, False, config)
    return out


def tile_forward(x, y, alpha, beta, theta, relation, options, kappa, config=None):
    """(row_stat [N], col_stat [M0]) fp32 (``spec.state_shape``: [N, 2], [M0, 2] for
    masked_sum); see forward.py for why this is two launches.
    ``config`` (BLOCK_A, BLOCK_B, BLOCK_K, warps, stages) overrides the dtype default."""
    o = Options(options, relation, y.shape[0])
    dummy = theta.new_empty(1, dtype=torch.int64)
    row = _row_stat(x, y, alpha, beta, theta,
                    relation_pointers(o.relation, relation, False, dummy), x.shape[0],
                    o.diag_offset, o.meta("fwd", False, x.dtype, kappa), config)
    col = _row_stat(y, x, beta, alpha, theta,
                    relation_pointers(o.relation, relation, True, dummy), o.cols_both,
                    -o.diag_offset, o.meta("fwd", True, x.dtype, kappa), config)
    return row, col


def _row_grads(a, b, sa, sb, theta, rel, st_a, st_b, g_a, g_b, na_stat, nb_stat, off, meta,
               config):
    """dA, dSA and the theta partials of one launch; with FWD_GRAD, also st_a [na_stat] (the
    output statistic) written in place, and st_b, g_a, g_b unread."""
    na, k = a.shape
    nb = b.shape[0]
    da = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    dsa = torch.empty(sa.shape, dtype=sa.dtype, device=sa.device)
    part = torch.zeros(max(triton.cdiv(na, _MIN_BWD_BLOCK_A), 1), 2, dtype=torch.float32,
                       device=a.device)
    if na == 0:
        return da, dsa, part
    args = (a, b, sa, sb, theta, *rel, st_a, st_b, g_a, g_b, da, dsa, part,
            na, nb, na_stat, nb_stat, k, a.stride(0), b.stride(0), da.stride(0), off,
            _bucket(na), _bucket(nb))
    _launch("bwd", args, na, meta, a.dtype, k, True, config)
    return da, dsa, part


def tile_backward(x, y, alpha, beta, theta, relation, options, kappa, row_stat, col_stat,
                  g_row, g_col, config=None):
    """(dX, dY, d_alpha, d_beta, d_theta): dX / d_alpha / d_theta over row blocks, dY / d_beta
    over column blocks (the swapped launch); deterministic, no atomics. ``config``
    (BLOCK_A, BLOCK_B, BLOCK_K, BLOCK_D, warps, stages) overrides the dtype default."""
    o = Options(options, relation, y.shape[0])
    n, m0 = x.shape[0], o.cols_both
    dummy = theta.new_empty(1, dtype=torch.int64)
    g_row = g_row.to(torch.float32).contiguous()
    g_col = g_col.to(torch.float32).contiguous()
    row_stat, col_stat = row_stat.contiguous(), col_stat.contiguous()  # [n, w]: row-major
    dx, d_alpha, part = _row_grads(
        x, y, alpha, beta, theta, relation_pointers(o.relation, relation, False, dummy),
        row_stat, col_stat, g_row, g_col, n, m0, o.diag_offset,
        o.meta("bwd", False, x.dtype, kappa), config)
    dy, d_beta, _ = _row_grads(
        y, x, beta, alpha, theta, relation_pointers(o.relation, relation, True, dummy),
        col_stat, row_stat, g_col, g_row, m0, n, -o.diag_offset,
        o.meta("bwd", True, x.dtype, kappa), config)
    return dx, dy, d_alpha, d_beta, _theta_grad(o, theta, part)


def _theta_grad(o, theta, part):
    """d_theta [3] from the row launch's per-row-block partials, summed in a fixed order."""
    gh, gs = part.sum(0).unbind()
    if spec.KINDS[o.kind] == "hyperbolic":
        # h is proportional to k = 1/sqrt(c): dl/dk = scale h / k.
        d_k = theta[spec.THETA_SCALE] * gh / theta[spec.THETA_INV_SQRT_C]
    else:
        d_k = torch.zeros_like(gh)
    return torch.stack([gh, d_k, gs]).to(theta.dtype)


def tile_forward_grad(x, y, alpha, beta, theta, relation, options, kappa, config=None):
    """(row_stat, col_stat, dX, dY, d_alpha, d_beta, d_theta) of a stat with a local G: the
    statistics of ``tile_forward`` and the gradients ``tile_backward`` gives for g_row = 1,
    g_col = 0, from the backward kernel with FWD_GRAD (one walk per side, see backward.py).
    ``config`` as for ``tile_backward``. A stat without a local G (lse) is refused."""
    o = Options(options, relation, y.shape[0])
    check_fwd_grad(o.stat)
    n, m0 = x.shape[0], o.cols_both
    dummy = theta.new_empty(1, dtype=torch.int64)
    row = _state(o.stat, n, x.device)
    col = _state(o.stat, m0, x.device)
    unread = theta.new_empty(1, dtype=torch.float32)  # ST_B, G_A, G_B under FWD_GRAD
    dx, d_alpha, part = _row_grads(
        x, y, alpha, beta, theta, relation_pointers(o.relation, relation, False, dummy),
        row, unread, unread, unread, n, m0, o.diag_offset,
        o.meta("fwd_grad", False, x.dtype, kappa), config)
    dy, d_beta, _ = _row_grads(
        y, x, beta, alpha, theta, relation_pointers(o.relation, relation, True, dummy),
        col, unread, unread, unread, m0, n, -o.diag_offset,
        o.meta("fwd_grad", True, x.dtype, kappa), config)
    return row, col, dx, dy, d_alpha, d_beta, _theta_grad(o, theta, part)
