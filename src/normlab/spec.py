"""The statistics-set table: every normalization is a choice of which elements share statistics.

This module is plain data and shape arithmetic; it imports no torch. Everything above it (the
reference math, the ops, the modules, the lab's pictures) reads the table from here.

Reshaped, every (kind, layout) becomes a *view* of the input in which one statistics group is a
set of reduced dimensions. ``plan()`` computes that view:

======== ======================================== ====================== ==========
kind     one group is                             statistics (train/eval) affine
======== ======================================== ====================== ==========
batch    one channel of every sample, all         batch / running        per channel
         positions
layer    the normalized block of one sample       the sample, always     per element
instance one channel of one sample, all positions the sample (running    per channel
                                                  optional)
group    C/G consecutive channels of one sample   the sample             per channel
rms      as layer, the mean is not subtracted     the sample             per element
adain    as instance; scale and shift are the     the sample             from style
         style's std and mean
dyt      no group: ``w * tanh(alpha * x) + b``     none (pointwise)       per element
         elementwise (Zhu et al. 2025)
derf     no group: ``w * erf(alpha * x + s) + b``  none (pointwise)       per element
         elementwise (arXiv 2512.10938)
======== ======================================== ====================== ==========

``dyt`` and ``derf`` are the *pointwise* kinds (``POINTWISE``): no statistics at all, a
learnable scalar ``alpha`` (and ``s``) instead; their affine is laid out as layer norm's, over
the ``normalized_shape`` block at the channel axis, which is all ``plan()`` computes for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import prod

__all__ = ["ACTIVATIONS", "BLOCK_KINDS", "COLUMN", "ELEMENT", "KINDS", "POINTWISE", "ROW",
           "SPECS", "STATISTICS_KINDS", "STAT_DTYPES", "Kernel", "NormSpec", "Plan",
           "canonical_axis", "plan", "stat_dtype_name"]


@dataclass(frozen=True)
class NormSpec:
    """One row of the statistics-set table (which elements form one group is ``plan()``'s
    geometry; the words are in the table above). Every field is read by ``plan()``."""

    kind: str
    centered: bool  # False for rms: the mean is not subtracted (Plan.centered)
    train_stats: str  # "batch" | "sample" | "none": Plan.stats of a call ("none": pointwise)
    eval_stats: str  # "running" | "sample" | "running-optional" | "none": running=True allowed?
    affine: str  # "channel" | "element" | "style": Plan.affine


SPECS: dict[str, NormSpec] = {
    s.kind: s
    for s in (
        NormSpec("batch", True, "batch", "running", "channel"),
        NormSpec("layer", True, "sample", "sample", "element"),
        NormSpec("instance", True, "sample", "running-optional", "channel"),
        NormSpec("group", True, "sample", "sample", "channel"),
        NormSpec("rms", False, "sample", "sample", "element"),
        NormSpec("adain", True, "sample", "sample", "style"),
        NormSpec("dyt", False, "none", "none", "element"),
        NormSpec("derf", False, "none", "none", "element"),
    )
}
KINDS: tuple[str, ...] = tuple(SPECS)
# the kinds without statistics: one elementwise map with learnable scalars (Plan.stats "none")
POINTWISE: tuple[str, ...] = tuple(k for k, s in SPECS.items() if s.train_stats == "none")
# the kinds that compute statistics (what ``normlab explain`` draws)
STATISTICS_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k not in POINTWISE)
# the kinds whose affine is per element over a normalized_shape block
BLOCK_KINDS: tuple[str, ...] = ("layer", "rms", *POINTWISE)


# The statistics dtype rule, once: input dtype name -> statistics dtype name (float32 for every
# dtype not listed). Mean, variance, rstd and the kernels' sums are kept in it.
STAT_DTYPES: dict[str, str] = {"float64": "float64"}
DEFAULT_STAT_DTYPE = "float32"

# Fused activations, in the order the kernels number them (1, 2, ...; 0 is none).
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "silu")


def stat_dtype_name(dtype_name: str) -> str:
    """The statistics dtype for an input dtype, by name (``"torch."`` prefix allowed)."""
    return STAT_DTYPES.get(dtype_name.removeprefix("torch."), DEFAULT_STAT_DTYPE)


ROW, COLUMN, ELEMENT = "row", "column", "element"


@dataclass(frozen=True)
class Kernel:
    """The kernels' reading of the input's memory (``normlab.kernels.triton.norm``): a 4-D view
    ``dims = (NB, D0, D1, D2)`` in which a group is one ``(b, d1)`` reduced over ``(d0, d2)``;
    ``affine = (MOD_B, SB, S0, S1, S2)``: element ``(b, d0, d1, d2)`` uses weight index
    ``(b % MOD_B) * SB + d0*S0 + d1*S1 + d2*S2``; ``mask = (MB_DIV, MB_MUL, M0, M2)``: its
    position in the (N, positions) mask is ``(b // MB_DIV) * MB_MUL + d0*M0 + d2*M2`` (None for
    layer and rms, whose masks the kernels do not fuse).

    Family ELEMENT (the pointwise kinds, ``normlab.kernels.triton.pointwise``): ``dims =
    (OUTER, PERIOD, INNER, 1)``, the memory read as ``(OUTER, PERIOD, INNER)`` with the
    ``PERIOD`` affine elements (the flattened ``normalized_shape`` block) in the middle: the
    element at memory offset ``o`` uses weight ``(o // INNER) % PERIOD``. ``affine`` and
    ``mask`` are unused there (``(1, 0, 0, 0, 0)``, None)."""

    family: str  # ROW (one program per group), COLUMN (D2 == 1, adjacent groups per program;
    # the weight per group, S1, except layer and rms norm over the channel of channels-first
    # memory, whose weight is per row of the column, S0) or ELEMENT (pointwise kinds)
    dims: tuple[int, int, int, int]
    affine: tuple[int, int, int, int, int]
    mask: tuple[int, int, int, int] | None


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: plans are cached
class Plan:
    """How to compute one kind on one input shape (and, given strides, one memory layout).

    ``view_shape``: the input reshaped so that each statistics group is the set of
    ``reduce_dims`` at fixed values of the other dims. ``affine_shape``: the shape the weight and
    bias are viewed as to broadcast against the *input* (not the view). ``stats_shape``: the shape
    of mean and rstd (``view_shape`` with the reduced dims set to 1).

    ``stats``: where this call's statistics come from, read off the table: ``"batch"`` or
    ``"sample"`` (computed from the input) or ``"running"`` (the running averages, a per-channel
    affine map). ``affine``: the table's affine kind (``"channel"``, ``"element"``, ``"style"``).
    ``running_rows``: how many per-sample rows of statistics are averaged into the running
    ones (1 for batch norm, N for instance norm). ``batch``, ``channels``, ``positions``,
    ``channel_last``: the (N, C, P) reading of a channel-axis kind (the masked path's 3-D view,
    ``(N, C, P)`` or ``(N, P, C)``). ``kernel``: the kernels' view of the memory, or None when
    no strides were given or the kernels do not read this layout in place.
    """

    kind: str
    shape: tuple[int, ...]
    view_shape: tuple[int, ...]
    reduce_dims: tuple[int, ...]
    affine_shape: tuple[int, ...]
    centered: bool
    stats: str = "sample"
    affine: str = "channel"
    batch: int = 0
    channels: int = 0
    positions: int = 0
    channel_last: bool = False
    kernel: Kernel | None = None
    stats_shape: tuple[int, ...] = ()  # filled in by __post_init__
    group_size: int = 0  # number of elements in one statistics group
    stat_dtype: str = ""  # filled in from ``dtype`` by plan()

    def __post_init__(self):
        # plain fields rather than properties: torch.compile reads them as constants
        if self.stats == "none":  # pointwise kinds: no statistics, no groups
            object.__setattr__(self, "stats_shape", ())
            object.__setattr__(self, "group_size", 0)
            return
        stats = tuple(1 if d in self.reduce_dims else n for d, n in enumerate(self.view_shape))
        object.__setattr__(self, "stats_shape", stats)
        object.__setattr__(self, "group_size",
                           prod([self.view_shape[d] for d in self.reduce_dims]))

    @property
    def shape3(self) -> tuple[int, int, int]:
        n, c, p = self.batch, self.channels, self.positions
        return (n, p, c) if self.channel_last else (n, c, p)

    @property
    def running_rows(self) -> int:
        return 1 if self.kind == "batch" else self.batch


def canonical_axis(channel_axis: int, ndim: int) -> int:
    """The non-negative position of the channel axis (``1`` or ``-1`` -> ``ndim - 1``)."""
    return channel_axis % ndim


def _dense(shape, strides, order) -> bool:
    """Whether the dims in ``order`` (outermost first) are dense in memory in that order;
    size-1 dims are ignored, as ``torch.Tensor.is_contiguous`` does."""
    expected = 1
    for d in reversed(order):
        if shape[d] != 1:
            if strides[d] != expected:
                return False
            expected *= shape[d]
    return True


def _channels_last_memory(shape, strides, c) -> bool | None:
    """True if the channel axis is innermost in memory and the rest dense in logical order,
    False if the memory is in logical (channels-first) order, None otherwise."""
    ndim = len(shape)
    if _dense(shape, strides, range(ndim)):
        return c == ndim - 1
    if c == 1 and ndim in (4, 5) and _dense(shape, strides, (0, *range(2, ndim), 1)):
        return True
    return None


def _element_kernel(shape, strides, block) -> Kernel | None:
    """The ELEMENT view of a dense input of any memory order: the block dims (``block``,
    logical order) must follow each other in memory in that order; then the memory is
    (OUTER, PERIOD, INNER) with PERIOD = the block's size and INNER = what lies inside it."""
    ndim = len(shape)
    order = sorted([d for d in range(ndim) if shape[d] != 1], key=lambda d: -strides[d])
    if not _dense(shape, strides, order) or prod(shape) == 0:
        return None
    inblock = [d for d in order if d in block]
    if inblock:
        first = order.index(inblock[0])
        if order[first:first + len(inblock)] != inblock or inblock != sorted(inblock):
            return None
        inner = prod([shape[d] for d in order[first + len(inblock):]])
    else:
        inner = 1
    period = prod([shape[d] for d in block])
    return Kernel(ELEMENT, (prod(shape) // (period * inner), period, inner, 1), (1, 0, 0, 0, 0),
                  None)


def _kernel(kind, shape, strides, c, num_groups, k, channel_axis) -> Kernel | None:
    ndim = len(shape)
    if kind in POINTWISE:
        first = ndim - k if channel_axis == -1 else 1
        return _element_kernel(shape, strides, tuple(range(first, first + k)))
    if kind in ("layer", "rms"):
        trailing = channel_axis == -1 or k == ndim - 1
        if not _dense(shape, strides, range(ndim)):
            return None
        if trailing:
            length = prod(shape[ndim - k:])
            return Kernel(ROW, (prod(shape) // max(length, 1), 1, 1, length), (1, 0, 0, 0, 1),
                          None)
        if k == 1:  # over the channel of channels-first memory (timm's LayerNorm2d): a group
            # per (sample, position), the C rows of its column, row d0 its own weight (S0)
            n, ch = shape[0], shape[1]
            return Kernel(COLUMN, (n, ch, prod(shape) // max(n * ch, 1), 1), (1, 0, 1, 0, 0),
                          None)
        return None
    if kind == "adain":
        return None
    last = _channels_last_memory(shape, strides, c)
    if last is None:
        return None
    n, ch = shape[0], shape[c]
    p = prod(shape) // max(n * ch, 1)
    if kind == "batch":  # one group per channel over every sample and position
        return (Kernel(COLUMN, (1, n * p, ch, 1), (1, 0, 0, 1, 0), (1, 0, 1, 0)) if last
                else Kernel(ROW, (1, n, ch, p), (1, 0, 0, 1, 0), (1, 0, p, 1)))
    if kind == "instance":  # one group per (sample, channel)
        return (Kernel(COLUMN, (n, p, ch, 1), (1, 0, 0, 1, 0), (1, p, 1, 0)) if last
                else Kernel(ROW, (n * ch, 1, 1, p), (ch, 1, 0, 0, 0), (ch, p, 0, 1)))
    g = int(num_groups)  # group: one group per (sample, C/G consecutive channels)
    kk = ch // g
    return (Kernel(ROW, (n, p, g, kk), (1, 0, 0, kk, 1), (1, p, 1, 0)) if last
            else Kernel(ROW, (n * g, kk, 1, p), (g, kk, 1, 0, 0), (g, p, 0, 1)))


@lru_cache(maxsize=4096)
def plan(
    kind: str,
    shape: tuple[int, ...],
    *,
    channel_axis: int = 1,
    num_groups: int | None = None,
    normalized_ndim: int | None = None,
    strides: tuple[int, ...] | None = None,
    running: bool = False,
    dtype: str = "float32",
) -> Plan:
    """The view, reduced dims and affine shape of ``kind`` on an input of ``shape``.

    ``channel_axis`` is 1 (channels first, N x C x ...) or -1 (channels last, N x ... x C).
    For ``layer``, ``rms`` and the pointwise kinds, ``normalized_ndim`` dims form the normalized
    block: the trailing ones when ``channel_axis == -1`` (torch.nn's convention), the ones
    starting at axis 1 when ``channel_axis == 1``; a pointwise kind reduces nothing
    (``reduce_dims == ()``, ``stats_shape == ()``): the block only lays out its affine.
    ``strides`` (the input's, in elements) gives the kernels' view (``Plan.kernel``);
    ``running`` asks for the running statistics (only where the table's eval statistics allow
    them); ``dtype`` is the input dtype's name (``Plan.stat_dtype``).
    Inputs are assumed valid: ``functional`` checks them first. Cached: a plan is immutable.
    """
    spec = SPECS.get(kind)
    if spec is None:
        raise KeyError(f"unknown normalization kind {kind!r}; expected one of {KINDS}")
    if running and spec.eval_stats not in ("running", "running-optional"):  # "none" too
        raise ValueError(f"{kind} norm has no running statistics (its eval statistics are "
                         f"{spec.eval_stats!r})")
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    common = dict(stats="running" if running else spec.train_stats, affine=spec.affine,
                  centered=spec.centered)
    k = None
    if kind in BLOCK_KINDS:
        k = int(normalized_ndim)
        first = ndim - k if channel_axis == -1 else 1
        view, block = shape, tuple(range(first, first + k))
        reduce = () if kind in POINTWISE else block
        affine = tuple(shape[d] if d in block else 1 for d in range(ndim))
        c = None
        geo = {}
    else:
        c = canonical_axis(channel_axis, ndim)
        affine = tuple(shape[c] if d == c else 1 for d in range(ndim))
        n, ch = shape[0], shape[c]
        geo = dict(batch=n, channels=ch, positions=prod(shape) // max(n * ch, 1),
                   channel_last=c == ndim - 1)
        view = shape
        if kind == "batch":
            reduce = tuple(d for d in range(ndim) if d != c)
        elif kind in ("instance", "adain"):
            reduce = tuple(d for d in range(ndim) if d not in (0, c))
        else:  # group: split the channel axis C into (G, C/G); a group is (C/G, positions)
            g = int(num_groups)
            view = shape[:c] + (g, shape[c] // g) + shape[c + 1:]  # N,[S..],G,C/G,[S..]
            reduce = tuple(d for d in range(len(view)) if d not in (0, c))
    kernel = (None if strides is None
              else _kernel(kind, shape, tuple(strides), c, num_groups, k, channel_axis))
    p = Plan(kind, shape, view, reduce, affine, kernel=kernel, **common, **geo)
    object.__setattr__(p, "stat_dtype", stat_dtype_name(dtype))
    return p
