"""``normlab explain``: which elements share one set of statistics, drawn from the spec table.

Two pictures of the N x C x (H*W) block. The shelf (:func:`draw_shelf`): N books of C pages of
H*W positions as a 3-D stack of cubes, one block per kind side by side, the first element's
statistics group shaded (Wu & He 2018, Fig. 2). The 2-D view (:func:`draw`): each sample a
panel of C channel rows by H*W position columns, every group its own pale colour and the first
element's strong. :func:`explain` puts both in one figure. The group structure comes from
``normlab.spec.plan``, the same table the ops use, so a kind added to the table draws itself.
"""

from __future__ import annotations

import math

import numpy as np

from normlab import spec

__all__ = ["SHELF_KINDS", "describe", "draw", "draw_shelf", "explain", "group_ids"]

_WORDS = {
    "batch": "for each channel c, the mean and variance over all N samples and all {pos} "
             "positions",
    "layer": "for each sample n, the mean and variance over all C channels and all {pos} "
             "positions (the whole sample)",
    "instance": "for each sample n and channel c, the mean and variance over the {pos} "
                "positions",
    "group": "for each sample n and each group of C/G = {cpg} consecutive channels, the mean "
             "and variance over those channels and all {pos} positions",
    "rms": "for each sample n, the mean square (no mean is subtracted) over all C channels and "
           "all {pos} positions",
    "adain": "as instance norm: for each sample n and channel c, over the {pos} positions; the "
             "scale and shift are then the style's per-channel std and mean",
}


def _plan(kind: str, shape, groups: int) -> spec.Plan:
    if kind in ("layer", "rms"):
        return spec.plan(kind, shape, channel_axis=1, normalized_ndim=len(shape) - 1)
    return spec.plan(kind, shape, channel_axis=1, num_groups=groups)


def group_ids(kind: str, shape, groups: int = 2) -> np.ndarray:
    """An int array of ``shape``: the statistics group of every element."""
    p = _plan(kind, tuple(shape), groups)
    idx = np.arange(math.prod(shape)).reshape(p.view_shape)
    keep = [d for d in range(len(p.view_shape)) if d not in p.reduce_dims]
    rows = idx.transpose(keep + list(p.reduce_dims)).reshape(
        math.prod(p.view_shape[d] for d in keep), -1)  # one row per group
    out = np.empty(math.prod(shape), dtype=np.int64)
    for g, members in enumerate(rows):
        out[members] = g
    return out.reshape(shape)


def describe(kind: str, shape=(2, 6, 3, 3), groups: int = 2) -> str:
    """The reduction in words, with the counts for ``shape`` (N, C, *positions)."""
    if kind not in spec.STATISTICS_KINDS:  # DyT/Derf share nothing: nothing to draw
        raise ValueError(f"kind must be one of {spec.STATISTICS_KINDS}, got {kind!r}")
    n, c, *space = shape
    pos = " x ".join(str(s) for s in space) if space else "1"
    ids = group_ids(kind, shape, groups)
    n_groups = int(ids.max()) + 1
    per = ids.size // n_groups
    text = _WORDS[kind].format(pos=pos, cpg=c // groups)
    return (f"{kind} norm: {text}. For an input of shape {tuple(shape)}: {n_groups} groups of "
            f"{per} values each.")


def _figure(width: float, height: float):
    """A figure outside pyplot: drawing it never changes a notebook's backend, and nothing is
    left open in pyplot's list of figures."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _colours(ids: np.ndarray):
    import matplotlib

    pale = matplotlib.colormaps["Pastel2"]
    n_groups = int(ids.max()) + 1
    colours = [pale(g % 8) for g in range(n_groups)]
    colours[int(ids.flat[0])] = _STRONG
    return colours


_STRONG = (0.80, 0.20, 0.15, 1.0)


def draw(kind: str, shape=(2, 6, 3, 3), groups: int = 2, ax_row=None, fig=None):
    """A matplotlib figure of the groups of ``kind`` on ``shape`` (N, C, *positions): the 2-D
    view, one panel of C channel rows by H*W position columns per sample. ``fig`` (a figure or
    subfigure) is drawn into instead of a new figure."""
    from matplotlib.colors import ListedColormap

    ids = group_ids(kind, shape, groups)
    n, c = shape[0], shape[1]
    flat = ids.reshape(n, c, -1)
    n_groups = int(ids.max()) + 1
    cmap = ListedColormap(_colours(ids))
    own = fig is None
    fig = _figure(1.2 + 1.6 * n, 2.4) if own else fig
    axes = fig.subplots(1, n, squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(flat[i], cmap=cmap, vmin=-0.5, vmax=n_groups - 0.5, aspect="auto")
        ax.set_title(f"sample n={i}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks(range(c))
        ax.set_yticklabels([f"c{j}" for j in range(c)], fontsize=7)
        ax.set_xlabel("H x W positions", fontsize=8)
        for x in range(flat.shape[2] + 1):
            ax.axvline(x - 0.5, color="white", lw=0.6)
        for y in range(c + 1):
            ax.axhline(y - 0.5, color="white", lw=0.6)
    fig.suptitle(f"{kind} norm: one statistics group in red", fontsize=10)
    if own:
        fig.tight_layout()
    return fig


SHELF_KINDS = ("batch", "layer", "instance", "group")  # Wu & He 2018, Fig. 2
SHELF_SHAPE = (4, 6, 2, 2)
_MAX_SHELF = 512  # elements drawn as cubes; a larger shape draws the shelf at SHELF_SHAPE


def draw_shelf(kinds=SHELF_KINDS, shape=SHELF_SHAPE, groups: int = 2, highlight=None,
               fig=None):
    """The books on a shelf in three dimensions, one block per kind side by side (as Wu & He
    2018, Fig. 2): the N x C x (H*W) input as N books of C pages of H*W positions, the
    elements of one statistics group (the first element's) shaded red. Computed from
    ``normlab.spec.plan`` through :func:`group_ids`, so any kind of the table draws itself.
    ``highlight`` names the kind whose title is set in bold."""
    n, c = shape[0], shape[1]
    p = math.prod(shape[2:])
    own = fig is None
    fig = _figure(3.0 * len(kinds), 3.3) if own else fig
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1, projection="3d")
        ids = group_ids(kind, shape, groups).reshape(n, c, p)
        shaded = ids == ids.flat[0]
        colours = np.empty((n, c, p, 4))
        colours[...] = (0.86, 0.88, 0.92, 0.35)
        colours[shaded] = _STRONG
        # x: the books (N), y: the pages of a book (C), z: the positions of a page (H*W)
        # ax.cubes: {(n, c, p): the cube's Poly3DCollection}, for whoever reads the picture back
        ax.cubes = ax.voxels(np.ones((n, c, p), dtype=bool), facecolors=colours,
                             edgecolor=(0.3, 0.3, 0.35, 0.5), linewidth=0.3)
        ax.set_xlabel("N", labelpad=-12)
        ax.set_ylabel("C", labelpad=-12)
        ax.set_zlabel("H, W", labelpad=-12)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
        ax.set_box_aspect((n, c, min(p, max(n, c))))  # a tall page squashed to fit
        ax.view_init(elev=22, azim=-58)
        ax.set_title(f"{kind} norm", fontsize=11,
                     fontweight="bold" if kind == highlight else "normal")
    label = f"groups={groups}" if "group" in kinds else ""
    fig.suptitle(f"N books of C pages of H x W: the red block shares one mean and variance "
                 f"(shape {tuple(shape)}{', ' + label if label else ''})", fontsize=10)
    return fig


def explain(kind: str = "group", shape=(2, 6, 3, 3), groups: int = 2):
    """The picture ``normlab explain KIND`` draws, as a matplotlib figure: on top the shelf of
    :func:`draw_shelf` (batch, layer, instance and group norm side by side, and ``kind`` if it
    is another), below the 2-D view of ``kind`` on ``shape`` (:func:`draw`). In a notebook the
    figure shows itself as the last expression of a cell."""
    if kind not in spec.SPECS:
        raise ValueError(f"kind must be one of {spec.KINDS}, got {kind!r}")
    kinds = SHELF_KINDS + (() if kind in SHELF_KINDS else (kind,))
    shelf, shelf_groups = tuple(shape), groups
    if math.prod(shelf) > _MAX_SHELF or len(shelf) < 3:
        shelf, shelf_groups = SHELF_SHAPE, 2
    width = max(3.0 * len(kinds), 1.2 + 1.6 * shape[0])
    fig = _figure(width, 6.2)
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.4, 2.6])
    draw_shelf(kinds, shelf, shelf_groups, highlight=kind, fig=top)
    draw(kind, shape, groups, fig=bottom)
    return fig
