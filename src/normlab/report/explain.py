"""``normlab explain``: which elements share one set of statistics, drawn from the spec table.

The picture is the N x C x (H*W) block (each sample a panel of C channel rows by H*W position
columns); every statistics group gets its own pale colour and the group of the first element is
drawn strong. The group structure comes from ``normlab.spec.plan``, the same table the ops use.
"""

from __future__ import annotations

import math

import numpy as np

from normlab import spec

__all__ = ["describe", "draw", "group_ids"]

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


def draw(kind: str, shape=(2, 6, 3, 3), groups: int = 2, ax_row=None):
    """A matplotlib figure of the groups of ``kind`` on ``shape`` (N, C, *positions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    ids = group_ids(kind, shape, groups)
    n, c = shape[0], shape[1]
    flat = ids.reshape(n, c, -1)
    first = ids.flat[0]
    pale = plt.get_cmap("Pastel2")
    fig, axes = plt.subplots(1, n, figsize=(1.2 + 1.6 * n, 2.4), squeeze=False)
    n_groups = int(ids.max()) + 1
    colours = [pale(g % 8) for g in range(n_groups)]
    colours[first] = (0.80, 0.20, 0.15, 1.0)
    cmap = ListedColormap(colours)
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
    fig.tight_layout()
    return fig
