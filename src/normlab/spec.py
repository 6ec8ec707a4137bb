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
======== ======================================== ====================== ==========
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

__all__ = ["KINDS", "SPECS", "NormSpec", "Plan", "canonical_axis", "plan"]


@dataclass(frozen=True)
class NormSpec:
    """One row of the statistics-set table."""

    kind: str
    group: str  # in words: which elements share one mean and variance
    centered: bool  # False for rms: the mean is not subtracted
    train_stats: str  # "batch" | "sample"
    eval_stats: str  # "running" | "sample" | "running-optional"
    affine: str  # "channel" | "element" | "style"


SPECS: dict[str, NormSpec] = {
    s.kind: s
    for s in (
        NormSpec("batch", "one channel of every sample, all positions", True, "batch", "running",
                 "channel"),
        NormSpec("layer", "the normalized block of one sample", True, "sample", "sample",
                 "element"),
        NormSpec("instance", "one channel of one sample, all positions", True, "sample",
                 "running-optional", "channel"),
        NormSpec("group", "C/G consecutive channels of one sample, all positions", True, "sample",
                 "sample", "channel"),
        NormSpec("rms", "the normalized block of one sample (mean not subtracted)", False,
                 "sample", "sample", "element"),
        NormSpec("adain", "one channel of one sample, all positions", True, "sample", "sample",
                 "style"),
    )
}
KINDS: tuple[str, ...] = tuple(SPECS)


@dataclass(frozen=True)
class Plan:
    """How to compute one kind on one input shape.

    ``view_shape``: the input reshaped so that each statistics group is the set of
    ``reduce_dims`` at fixed values of the other dims. ``affine_shape``: the shape the weight and
    bias are viewed as to broadcast against the *input* (not the view). ``stats_shape``: the shape
    of mean and rstd (``view_shape`` with the reduced dims set to 1).
    """

    kind: str
    shape: tuple[int, ...]
    view_shape: tuple[int, ...]
    reduce_dims: tuple[int, ...]
    affine_shape: tuple[int, ...]
    centered: bool
    stats_shape: tuple[int, ...] = ()  # filled in by __post_init__
    group_size: int = 0  # number of elements in one statistics group

    def __post_init__(self):
        # plain fields rather than properties: torch.compile reads them as constants
        stats = tuple(1 if d in self.reduce_dims else n for d, n in enumerate(self.view_shape))
        object.__setattr__(self, "stats_shape", stats)
        object.__setattr__(self, "group_size",
                           prod([self.view_shape[d] for d in self.reduce_dims]))


def canonical_axis(channel_axis: int, ndim: int) -> int:
    """The non-negative position of the channel axis (``1`` or ``-1`` -> ``ndim - 1``)."""
    return channel_axis % ndim


def plan(
    kind: str,
    shape: tuple[int, ...],
    *,
    channel_axis: int = 1,
    num_groups: int | None = None,
    normalized_ndim: int | None = None,
) -> Plan:
    """The view, reduced dims and affine shape of ``kind`` on an input of ``shape``.

    ``channel_axis`` is 1 (channels first, N x C x ...) or -1 (channels last, N x ... x C).
    For ``layer`` and ``rms``, ``normalized_ndim`` dims form the normalized block: the trailing
    ones when ``channel_axis == -1`` (torch.nn's convention), the ones starting at axis 1 when
    ``channel_axis == 1``. Inputs are assumed valid: ``functional`` checks them first.
    """
    spec = SPECS[kind]
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    if kind in ("layer", "rms"):
        k = int(normalized_ndim)
        first = ndim - k if channel_axis == -1 else 1
        block = tuple(range(first, first + k))
        affine = tuple(shape[d] if d in block else 1 for d in range(ndim))
        return Plan(kind, shape, shape, block, affine, spec.centered)

    c = canonical_axis(channel_axis, ndim)
    affine = tuple(shape[c] if d == c else 1 for d in range(ndim))
    if kind == "batch":
        reduce = tuple(d for d in range(ndim) if d != c)
        return Plan(kind, shape, shape, reduce, affine, spec.centered)
    if kind in ("instance", "adain"):
        reduce = tuple(d for d in range(ndim) if d not in (0, c))
        return Plan(kind, shape, shape, reduce, affine, spec.centered)
    if kind == "group":
        g = int(num_groups)
        # split the channel axis C into (G, C/G); a group is (C/G, all positions) of one sample
        view = shape[:c] + (g, shape[c] // g) + shape[c + 1:]  # N,[S..],G,C/G,[S..]
        reduce = tuple(d for d in range(len(view)) if d not in (0, c))
        return Plan(kind, shape, view, reduce, affine, spec.centered)
    raise KeyError(f"unknown normalization kind {kind!r}; expected one of {KINDS}")
