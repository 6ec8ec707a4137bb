"""The statistics-set table: each plan's groups are exactly the elements the kind's definition
puts together (checked by labelling elements and comparing with explicit index arithmetic)."""

from __future__ import annotations

import itertools

import pytest
import torch

from normlab import spec


def _groups_from_plan(p: spec.Plan):
    """Group id of every input element, read off the plan's view and reduce dims."""
    ids = torch.arange(torch.Size(p.shape).numel()).reshape(p.shape)
    view = ids.reshape(p.view_shape)
    keep = [d for d in range(len(p.view_shape)) if d not in p.reduce_dims]
    out = {}
    for key in itertools.product(*[range(p.view_shape[d]) for d in keep]):
        index = [slice(None)] * len(p.view_shape)
        for d, k in zip(keep, key, strict=True):
            index[d] = k
        for e in view[tuple(index)].flatten().tolist():
            out[e] = key
    return out


def _expected_key(kind, idx, shape, axis, groups, k):
    c = axis % len(shape)
    if kind == "batch":
        return (idx[c],)
    if kind in ("instance", "adain"):
        return (idx[0], idx[c])
    if kind == "group":
        return (idx[0], idx[c] // (shape[c] // groups))
    block = range(len(shape) - k, len(shape)) if axis == -1 else range(1, 1 + k)
    return tuple(i for d, i in enumerate(idx) if d not in block)


CASES = [("batch", (2, 3, 4), 1, None, None), ("batch", (2, 4, 3), -1, None, None),
         ("instance", (2, 3, 2, 2), 1, None, None), ("instance", (2, 2, 2, 3), -1, None, None),
         ("group", (2, 6, 2), 1, 3, None), ("group", (2, 2, 6), -1, 2, None),
         ("layer", (2, 3, 4), -1, None, 2), ("layer", (2, 3, 4), 1, None, 1),
         ("rms", (3, 5), -1, None, 1), ("adain", (2, 3, 4), 1, None, None)]


@pytest.mark.parametrize("kind,shape,axis,groups,k", CASES)
def test_plan_groups_match_definition(kind, shape, axis, groups, k):
    p = spec.plan(kind, shape, channel_axis=axis, num_groups=groups, normalized_ndim=k)
    got = _groups_from_plan(p)
    # two elements share a group in the plan iff they share the definition's key
    flat = list(itertools.product(*[range(n) for n in shape]))
    want = {i: _expected_key(kind, idx, shape, axis, groups, k) for i, idx in enumerate(flat)}
    assert len(got) == len(flat)
    pairs_got = {(a, b) for a in got for b in got if got[a] == got[b]}
    pairs_want = {(a, b) for a in want for b in want if want[a] == want[b]}
    assert pairs_got == pairs_want
    sizes = {}
    for key in got.values():
        sizes[key] = sizes.get(key, 0) + 1
    assert set(sizes.values()) == {p.group_size}


def test_table_rows():
    assert spec.KINDS == ("batch", "layer", "instance", "group", "rms", "adain", "dyt", "derf")
    assert spec.POINTWISE == ("dyt", "derf")
    assert spec.STATISTICS_KINDS == spec.KINDS[:6]
    p = spec.plan("dyt", (2, 5, 3), channel_axis=1, normalized_ndim=1)
    assert (p.stats, p.reduce_dims, p.stats_shape, p.affine_shape) == ("none", (), (), (1, 5, 1))
    with pytest.raises(ValueError, match="dyt norm has no running statistics"):
        spec.plan("dyt", (2, 5), normalized_ndim=1, running=True)
    assert not spec.SPECS["rms"].centered and spec.SPECS["layer"].centered
    assert spec.SPECS["batch"].eval_stats == "running"
    assert spec.SPECS["adain"].affine == "style"
    p = spec.plan("group", (2, 8, 3, 3), num_groups=4)
    assert p.affine_shape == (1, 8, 1, 1) and p.stats_shape == (2, 4, 1, 1, 1)
    assert spec.plan("layer", (2, 3, 4), normalized_ndim=2, channel_axis=-1).affine_shape == \
        (1, 3, 4)
