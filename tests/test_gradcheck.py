"""gradcheck and gradgradcheck in float64 for every kind, on the reference path (the hand-derived
closed-form backward and its differentiable recomputation) and on the native path."""

from __future__ import annotations

import pytest
import torch

import normlab.functional as F
from normlab import ops

KINDS = {
    "batch": (lambda x, w, b, r, be, act: F.batch_norm(
        x, None, None, w, b, True, residual=r, activation=act, backend=be), (5, 3, 4), (3,)),
    "batch-eval": (lambda x, w, b, r, be, act: F.batch_norm(
        x, torch.linspace(-1, 1, 3, dtype=x.dtype), torch.linspace(0.5, 2, 3, dtype=x.dtype),
        w, b, False, residual=r, activation=act, backend=be), (5, 3, 4), (3,)),
    "batch-nhwc": (lambda x, w, b, r, be, act: F.batch_norm(
        x, None, None, w, b, True, channel_axis=-1, residual=r, activation=act, backend=be),
        (2, 3, 2, 3), (3,)),
    "instance": (lambda x, w, b, r, be, act: F.instance_norm(
        x, None, None, w, b, residual=r, activation=act, backend=be), (2, 3, 5), (3,)),
    "instance-cl": (lambda x, w, b, r, be, act: F.instance_norm(
        x.contiguous(memory_format=torch.channels_last), None, None, w, b, residual=r,
        activation=act, backend=be), (2, 3, 2, 3), (3,)),
    "group": (lambda x, w, b, r, be, act: F.group_norm(
        x, 2, w, b, residual=r, activation=act, backend=be), (2, 4, 3), (4,)),
    "group-nhwc": (lambda x, w, b, r, be, act: F.group_norm(
        x, 2, w, b, channel_axis=-1, residual=r, activation=act, backend=be), (2, 3, 4), (4,)),
    "layer": (lambda x, w, b, r, be, act: F.layer_norm(
        x, (5,), w, b, residual=r, activation=act, backend=be), (3, 5), (5,)),
    "layer-first": (lambda x, w, b, r, be, act: F.layer_norm(
        x, (3,), w, b, channel_axis=1, residual=r, activation=act, backend=be), (2, 3, 4), (3,)),
    "rms": (lambda x, w, b, r, be, act: F.rms_norm(
        x, (5,), w, 1e-5, residual=r, activation=act, backend=be), (3, 5), (5,)),
    "adain": (lambda x, w, b, r, be, act: F.adaptive_instance_norm(
        x, w, residual=r, activation=act, backend=be), (2, 3, 4), None),
}


def _inputs(kind, shape, pshape, with_residual):
    g = torch.Generator().manual_seed(1)

    def t(s):
        return torch.randn(s, generator=g, dtype=torch.float64).requires_grad_()

    x = t(shape)
    if kind == "adain":  # "weight" slot carries the style tensor
        w, b = t((shape[0], shape[1], 6)), None
    else:
        w, b = t(pshape), (None if kind == "rms" else t(pshape))
    r = t(shape) if with_residual else None
    return [a for a in (x, w, b, r)]


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("epilogue", [None, "silu"], ids=["plain", "residual+silu"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck_and_gradgradcheck(kind, epilogue, backend):
    fn, shape, pshape = KINDS[kind]
    x, w, b, r = _inputs(kind, shape, pshape, epilogue is not None)
    args = [a for a in (x, w, b, r) if a is not None]

    def f(*tensors):
        it = iter(tensors)
        xx = next(it)
        ww = next(it)
        bb = next(it) if b is not None else None
        rr = next(it) if r is not None else None
        return fn(xx, ww, bb, rr, backend, epilogue)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


# those it hands on: eval mode, AdaIN, a normalized block not in the last dims
NUMBA_KINDS = [k for k in KINDS if k not in ("batch-eval", "adain", "layer-first")]


@pytest.mark.skipif(not ops.cpu_available(), reason="numba is not installed")
@pytest.mark.parametrize("kind", NUMBA_KINDS)
def test_gradcheck_numba(kind):
    """The numba kernels' backward, and its double backward (the reference math's, see
    ``cpu_op._graph_backward``); which backend ran is checked, so a hand-on cannot pass for
    it."""
    fn, shape, pshape = KINDS[kind]
    x, w, b, _ = _inputs(kind, shape, pshape, False)
    args = [a for a in (x, w, b) if a is not None]

    def f(*tensors):
        return fn(tensors[0], tensors[1], tensors[2] if b is not None else None, None,
                  "numba", None)

    with ops.trace_backends() as ran:
        assert torch.autograd.gradcheck(f, args)
        assert torch.autograd.gradgradcheck(f, args)
    assert set(ran) == {"numba"}
