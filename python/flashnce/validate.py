"""Input checks, run once at the public API edge.

Shape, dtype and device checks are free. Value checks (non-finite features, curvature <= 0 given
as a tensor, ball points outside the ball) read tensor data, so they cost one host sync on a
GPU; they are skipped while ``torch.compile`` traces (``torch.compiler.is_compiling()``), where
data-dependent Python branches would break the graph.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch

from .features import rowwise_dot

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
REDUCTIONS = ("mean", "sum", "none")


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def functorch_transform() -> str | None:
    """The innermost active torch.func transform ("grad", "vmap", "jvp", ...) or None."""
    if _tracing():
        return None
    try:
        from torch._C._functorch import peek_interpreter_stack
    except ImportError:  # pragma: no cover - every supported torch has it
        return None
    top = peek_interpreter_stack()
    return None if top is None else top.key().name.lower()


def check_transforms() -> None:
    """torch.func.grad (and jacrev / hessian through it) is supported on the Python backends;
    vmap and forward-mode transforms are not: say so instead of failing inside a kernel."""
    transform = functorch_transform()
    if transform in ("vmap", "jvp"):
        raise RuntimeError(
            f"flashnce losses do not support torch.func.{transform} (their tile walks read "
            "tensor data and sizes per tile); loop over the batch, or use torch.func.grad / "
            "torch.autograd.grad, which are supported")


def align_autocast_dtypes(x, y):
    """Under autocast one tower may come out in bf16 / fp16 while the other is fp32 (cached
    embeddings, a frozen tower): promote both to the wider dtype, as a materialised loss in
    fp32 would. Outside autocast, differing dtypes stay an error (check_features)."""
    if (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype != y.dtype
            and x.is_floating_point() and y.is_floating_point()
            and torch.is_autocast_enabled(x.device.type)):
        common = torch.promote_types(x.dtype, y.dtype)
        return x.to(common), y.to(common)
    return x, y


def autocast_off(fn=None, *, towers: int = 2):
    """Run a loss with autocast off (after aligning the dtypes of its first two arguments when
    ``towers == 2``): the tile walk's math is fp32 by contract (16-bit operands, fp32
    accumulation and epilogue), and autocast would otherwise turn the torch backend's tile
    GEMMs and the O(N) assembly into 16-bit ops."""
    if fn is None:
        return functools.partial(autocast_off, towers=towers)

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        if towers == 2 and args:
            x, y = align_autocast_dtypes(x, args[0])
            args = (y, *args[1:])
        device = x.device.type if isinstance(x, torch.Tensor) else "cpu"
        if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return fn(x, *args, **kwargs)
        return fn(x, *args, **kwargs)

    return wrapper


def check_features(x, y) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D [batch, dim], got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{name} must be float32, float64, bfloat16 or float16, got {t.dtype}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): need batch >= 1, dim >= 1")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype} "
                        "(under torch.autocast they are promoted to the wider one)")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same feature dim, got {x.shape[1]} and {y.shape[1]}")
    check_transforms()
    if not _tracing() and x.device.type != "meta":
        # min and max propagate NaN and expose +-inf: a reduction pass with no N x d
        # temporary (isfinite(t).all() allocates a bool tensor per input), one host sync.
        with torch.no_grad():  # a check, not part of the loss: no autograd node
            extremes = torch.stack([*torch.aminmax(x), *torch.aminmax(y)])
        values = extremes.double().view(2, 2).tolist()
        for name, (lo, hi), t in (("x", values[0], x), ("y", values[1], y)):
            if not all(math.isfinite(v) for v in (lo, hi)):
                raise ValueError(f"{name} contains NaN or infinite values")
            _check_norm_range(name, max(-lo, hi), t)


def _check_norm_range(name: str, max_abs: float, t: torch.Tensor) -> None:
    """Squared row norms are computed in the compute dtype (fp32 for 16-bit / fp32 inputs):
    refuse features whose |x|^2 could overflow it (a cosine loss would silently change)."""
    limit = torch.finfo(torch.float64 if t.dtype == torch.float64 else torch.float32).max
    if max_abs * max_abs * t.shape[1] > limit / 4:
        bound = math.sqrt(limit / (4 * t.shape[1]))
        raise ValueError(
            f"{name} has entries up to {max_abs:.3g}: its squared row norms could overflow "
            f"{'float64' if t.dtype == torch.float64 else 'float32'} (entries must stay below "
            f"{bound:.3g} at dim {t.shape[1]}); rescale the features (cosine is scale-invariant)")


def check_positive_number(v, name: str) -> float:
    """A finite Python number > 0 (not a bool), as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def as_param(value, name: str, like: torch.Tensor, *, positive: bool) -> torch.Tensor:
    """A scalar parameter (Python number or 1-element tensor) as a 0-d tensor on x's device.

    Tensors keep their autograd graph (gradients flow back to the caller's tensor); the value
    is never modified in place.
    """
    # numbers.Real covers int, float and numpy's scalars (np.float32 is not a float subclass).
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a 1-element tensor, got {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must have exactly one element, got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if value.device != like.device and value.device.type != "cpu":
            raise ValueError(f"{name} is on {value.device} but the features are on {like.device}")
        if not _tracing() and value.device.type != "meta":
            v = float(value.detach().reshape(()))
            _check_value(v, name, positive)
        cd = torch.float64 if like.dtype == torch.float64 else torch.float32
        return value.reshape(()).to(device=like.device, dtype=cd)
    v = float(value)
    _check_value(v, name, positive)
    cd = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.tensor(v, dtype=cd, device=like.device)


def _check_value(v: float, name: str, positive: bool) -> None:
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")


def check_ball(x: torch.Tensor, curvature: torch.Tensor, name: str) -> None:
    """Poincare points given on the manifold must satisfy sqrt(c) ||x|| < 1 *as the prologue
    computes it* (squared norm and product in the compute dtype): a point a float64 check
    accepts can round onto the boundary in fp32, where artanh is infinite and gradients NaN."""
    if _tracing() or x.device.type == "meta":
        return
    with torch.no_grad():  # the prologue's own squared norms (fp32 opmath)
        q = rowwise_dot(x.detach(), x.detach())
        radius = curvature.detach().to(q.dtype).sqrt() * q.sqrt()
        worst = float(radius.max())
    if worst >= 1.0:
        raise ValueError(
            f"{name} has points outside the Poincare ball (or on its boundary in "
            f"{str(q.dtype).replace('torch.', '')}): max sqrt(c)*||x|| = {worst:.9g} >= 1 "
            "(pass tangent vectors with on_manifold=False, or project the points inside, "
            "e.g. to norm (1 - 4e-3) / sqrt(c))")


def check_choice(value, name: str, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_targets(targets, n: int, m: int, device):
    """One-way InfoNCE targets: None (row i's positive is column i, needs N <= M) or an int64
    tensor [N] of column indices in [0, M) on x's device (range checked outside tracing)."""
    if targets is None:
        if n > m:
            raise ValueError(f"without targets, row i's positive is column i, which needs "
                             f"N <= M; got N={n}, M={m}")
        return None
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a LongTensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must be int64 (LongTensor), got {targets.dtype}")
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
    if targets.device != device:
        raise ValueError(f"targets are on {targets.device} but x is on {device}")
    if not _tracing() and n > 0 and targets.device.type != "meta":
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= m:
            raise ValueError(f"targets must be column indices in [0, {m}), got range [{lo}, {hi}]")
    return targets


def check_label_tensor(t, name: str, n: int, device) -> torch.Tensor:
    """One side's class labels: an integer tensor [n] on ``device`` -> int64 (a new tensor,
    or the caller's when it already is one; never modified)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be an integer tensor, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must have an integer dtype (e.g. int64), got {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} are on {t.device} but the features are on {device}")
    return t.to(torch.int64).contiguous()


def check_class_labels(labels, n: int, num_classes: int, device, *, check_range=True):
    """Class ids [N] (any integer dtype) -> int64, each in [0, num_classes)."""
    lab = check_label_tensor(labels, "labels", n, device)
    if check_range and n and lab.device.type != "meta" and not _tracing():
        lo, hi = (int(v) for v in torch.aminmax(lab))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must be class indices in [0, {num_classes}) (the rows "
                             f"of centres), got values in [{lo}, {hi}]")
    return lab


def check_labels(labels, n: int, m: int, device):
    """Class labels of both sides for label relations (pairs with equal labels are positives):
    None, one integer tensor [N] for both sides (needs N == M), or a pair (x_labels [N],
    y_labels [M]). Returns None or (int64 [N], int64 [M]) -- new tensors or the caller's,
    never modified."""
    if labels is None:
        return None
    if isinstance(labels, (tuple, list)):
        if len(labels) != 2:
            raise ValueError(f"labels must be one tensor or a pair (x_labels, y_labels), got "
                             f"a sequence of {len(labels)}")
        return (check_label_tensor(labels[0], "x_labels", n, device),
                check_label_tensor(labels[1], "y_labels", m, device))
    if n != m:
        raise ValueError(f"one labels tensor serves both sides only when N == M (got N={n}, "
                         f"M={m}); pass (x_labels, y_labels)")
    t = check_label_tensor(labels, "labels", n, device)
    return t, t


def check_negatives(negatives, y) -> None:
    """Extra negative columns [K, d]: a floating tensor like y (dtype, device, width)."""
    if not isinstance(negatives, torch.Tensor):
        raise TypeError(f"negatives must be a tensor [K, d], got {type(negatives).__name__}")
    if negatives.dim() != 2 or negatives.shape[1] != y.shape[1]:
        raise ValueError(f"negatives must be [K, {y.shape[1]}] (the width of y), got shape "
                         f"{tuple(negatives.shape)}")
    if negatives.dtype != y.dtype:
        raise TypeError(f"negatives must have y's dtype {y.dtype}, got {negatives.dtype}")
    if negatives.device != y.device:
        raise ValueError(f"negatives are on {negatives.device} but y is on {y.device}")
    check_features(y, negatives)


def check_csr(csr, n: int, m: int, name: str):
    """Per-row column sets as CSR (indptr [n + 1], indices [nnz]), int64 on any device, the
    columns of row i in indices[indptr[i]:indptr[i + 1]] (any order), each in [0, m)."""
    if not (isinstance(csr, (tuple, list)) and len(csr) == 2):
        raise TypeError(f"{name} must be a pair (indptr, indices) of int64 tensors, got "
                        f"{type(csr).__name__}")
    indptr, indices = csr
    for part, t in (("indptr", indptr), ("indices", indices)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"{name}: {part} must be a 1-d int64 tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    if indptr.shape[0] != n + 1:
        raise ValueError(f"{name}: indptr must have N + 1 = {n + 1} entries, got "
                         f"{indptr.shape[0]}")
    if not _tracing() and indptr.device.type != "meta":
        if int(indptr[0]) != 0 or int(indptr[-1]) != indices.shape[0]:
            raise ValueError(f"{name}: indptr must start at 0 and end at len(indices) = "
                             f"{indices.shape[0]}, got {int(indptr[0])} and {int(indptr[-1])}")
        if n and bool((indptr[1:] < indptr[:-1]).any()):
            raise ValueError(f"{name}: indptr must be non-decreasing")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= m):
            raise ValueError(f"{name}: column indices must lie in [0, {m}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
    return indptr, indices


def check_target_labels(labels, targets) -> None:
    """exclude_labels: each row's target must carry the row's label (it is merged back)."""
    x_lab, y_lab = labels
    t = torch.arange(x_lab.shape[0], device=x_lab.device) if targets is None else targets
    if not _tracing() and x_lab.numel() and bool((y_lab[t] != x_lab).any()):
        raise ValueError("exclude_labels: every row's target must have the row's label (the "
                         "target is the one same-label column that counts)")
