"""Drop-in parity on degenerate shapes: every normlab module with a torch.nn twin (DyT: the
DyT authors' module) raises where the twin raises (the same exception type) and computes the
same elsewhere (float64), in training and eval: one element per group or channel, a batch of
one, an empty batch, 1 x 1 spatial size."""

from __future__ import annotations

import pytest
import torch
from torch import nn as tnn

import normlab.nn as nl
from tests.oracle import AuthorsDyT

D = torch.float64

# (name, normlab factory, torch.nn factory, input shapes)
TWINS = [
    ("BatchNorm1d", lambda: nl.BatchNorm1d(3), lambda: tnn.BatchNorm1d(3),
     [(1, 3), (2, 3), (0, 3), (1, 3, 1), (1, 3, 2), (0, 3, 4), (4, 3, 1)]),
    ("BatchNorm2d", lambda: nl.BatchNorm2d(3), lambda: tnn.BatchNorm2d(3),
     [(1, 3, 1, 1), (2, 3, 1, 1), (1, 3, 2, 1), (0, 3, 2, 2)]),
    ("BatchNorm3d", lambda: nl.BatchNorm3d(3), lambda: tnn.BatchNorm3d(3),
     [(1, 3, 1, 1, 1), (2, 3, 1, 1, 1), (0, 3, 1, 1, 1)]),
    ("BatchNorm1d untracked", lambda: nl.BatchNorm1d(3, track_running_stats=False),
     lambda: tnn.BatchNorm1d(3, track_running_stats=False), [(1, 3), (2, 3), (0, 3)]),
    ("BatchNorm1d momentum=None", lambda: nl.BatchNorm1d(3, momentum=None),
     lambda: tnn.BatchNorm1d(3, momentum=None), [(1, 3), (2, 3), (1, 3, 2)]),
    ("InstanceNorm1d", lambda: nl.InstanceNorm1d(3, affine=True),
     lambda: tnn.InstanceNorm1d(3, affine=True),
     [(1, 3, 1), (2, 3, 1), (1, 3, 2), (0, 3, 4), (3, 1), (3, 2)]),
    ("InstanceNorm1d tracked", lambda: nl.InstanceNorm1d(3, track_running_stats=True),
     lambda: tnn.InstanceNorm1d(3, track_running_stats=True),
     [(1, 3, 1), (1, 3, 2), (0, 3, 4), (3, 2)]),
    ("InstanceNorm2d", lambda: nl.InstanceNorm2d(3, affine=True),
     lambda: tnn.InstanceNorm2d(3, affine=True),
     [(1, 3, 1, 1), (2, 3, 1, 2), (0, 3, 2, 2), (3, 1, 1)]),
    ("InstanceNorm3d", lambda: nl.InstanceNorm3d(3), lambda: tnn.InstanceNorm3d(3),
     [(1, 3, 1, 1, 1), (1, 3, 1, 1, 2)]),
    ("GroupNorm one per group", lambda: nl.GroupNorm(3, 3), lambda: tnn.GroupNorm(3, 3),
     [(1, 3), (4, 3), (0, 3), (2, 3, 1), (2, 3, 1, 1), (1, 3, 2)]),
    ("GroupNorm", lambda: nl.GroupNorm(2, 4), lambda: tnn.GroupNorm(2, 4),
     [(1, 4), (1, 4, 1, 1), (0, 4, 3), (3, 4, 1)]),
    ("GroupNorm one group", lambda: nl.GroupNorm(1, 1), lambda: tnn.GroupNorm(1, 1),
     [(1, 1), (2, 1, 1, 1), (2, 1, 3)]),
    ("LayerNorm", lambda: nl.LayerNorm(1), lambda: tnn.LayerNorm(1),
     [(1,), (1, 1), (0, 1), (4, 1), (2, 3, 1)]),
    ("LayerNorm 2D block", lambda: nl.LayerNorm((1, 1)), lambda: tnn.LayerNorm((1, 1)),
     [(1, 1), (0, 1, 1), (3, 1, 1)]),
    ("RMSNorm", lambda: nl.RMSNorm(1), lambda: tnn.RMSNorm(1),
     [(1,), (1, 1), (0, 1), (4, 1)]),
    ("RMSNorm eps", lambda: nl.RMSNorm((1, 2), eps=1e-6), lambda: tnn.RMSNorm((1, 2), eps=1e-6),
     [(1, 2), (0, 1, 2), (3, 1, 2)]),
    # DyT against the DyT authors' module (torch.nn has none): a pointwise map refuses nothing
    ("DynamicTanh", lambda: nl.DynamicTanh(3), lambda: AuthorsDyT(3),
     [(1, 3), (0, 3), (2, 1, 3), (1, 1, 1, 3)]),
    ("DynamicTanh channels first", lambda: nl.DynamicTanh(3, channel_axis=1),
     lambda: AuthorsDyT(3, channels_last=False), [(1, 3, 1, 1), (0, 3, 2, 2), (2, 3, 1, 2)]),
    # the remedies against the batch norm they reduce to
    ("SyncBatchNorm", lambda: nl.SyncBatchNorm(3), lambda: tnn.SyncBatchNorm(3),
     [(1, 3), (2, 3), (0, 3), (1, 3, 1, 1), (2, 3, 1, 1)]),
    ("GhostBatchNorm1d", lambda: nl.GhostBatchNorm1d(3, virtual_batch_size=4),
     lambda: tnn.BatchNorm1d(3), [(1, 3), (2, 3), (0, 3), (1, 3, 1), (4, 3)]),
    ("BatchRenorm1d r_max=1 d_max=0",
     lambda: nl.BatchRenorm1d(3, momentum=0.1, r_max=1.0, d_max=0.0),
     lambda: tnn.BatchNorm1d(3), [(1, 3), (2, 3), (0, 3), (1, 3, 1), (1, 3, 2)]),
    ("BatchRenorm1d r_max=1 d_max=0 virtual_batch_size=4",
     lambda: nl.BatchRenorm1d(3, momentum=0.1, r_max=1.0, d_max=0.0, virtual_batch_size=4),
     lambda: tnn.BatchNorm1d(3), [(1, 3), (2, 3), (0, 3), (1, 3, 1), (4, 3)]),
]

# Where torch.nn fails inside its kernels rather than refusing the input: normlab computes
# the result its own docs promise (and the other kinds give) instead of copying the crash.
TORCH_CRASHES = {
    # torch.nn.InstanceNorm*d on an empty batch: "select(): index 0 out of range" (an
    # IndexError from its reshape to (1, N*C, ...)); normlab returns the empty output, as
    # torch.nn's batch and group norm do
    ("InstanceNorm1d", (0, 3, 4)), ("InstanceNorm2d", (0, 3, 2, 2)),
}

CASES = [(name, ours, ref, shape, mode) for name, ours, ref, shapes in TWINS
         for shape in shapes for mode in ("train", "eval")]


def _prepare(ours, ref):
    torch.manual_seed(0)
    ref = ref.double()
    for p in ref.parameters():  # not the default ones and zeros, so the affine is exercised
        with torch.no_grad():
            p.copy_(torch.rand_like(p) + 0.5)
    for name in ("running_mean", "running_var"):
        buf = getattr(ref, name, None)
        if buf is not None:
            buf.copy_(torch.rand_like(buf) + 0.5)
    ours = ours.double()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _outcome(module, x):
    try:
        return module(x), None
    except Exception as e:  # noqa: BLE001 - the exception type is what is compared
        return None, e


@pytest.mark.parametrize("name,ours,ref,shape,mode", CASES,
                         ids=[f"{c[0]}-{c[3]}-{c[4]}" for c in CASES])
def test_degenerate_shapes_match_torch_nn(name, ours, ref, shape, mode):
    ours, ref = _prepare(ours(), ref())
    ours.train(mode == "train")
    ref.train(mode == "train")
    x = torch.randn(shape, dtype=D) * 2 + 1
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    yo, eo = _outcome(ours, xo)
    yr, er = _outcome(ref, xr)
    if (name, shape) in TORCH_CRASHES:
        assert isinstance(er, IndexError) and eo is None and yo.shape == shape
        return
    if er is not None:
        assert eo is not None, f"torch.nn raised {type(er).__name__}: {er}; normlab computed"
        assert type(eo) is type(er), (f"torch.nn raised {type(er).__name__}: {er}; normlab "
                                      f"{type(eo).__name__}: {eo}")
        return
    assert eo is None, f"torch.nn computed; normlab raised {type(eo).__name__}: {eo}"
    assert yo.shape == yr.shape and yo.dtype == yr.dtype
    torch.testing.assert_close(yo, yr, rtol=1e-12, atol=1e-12)
    if x.numel():
        dy = torch.randn(yr.shape, dtype=D)
        yo.backward(dy)
        yr.backward(dy)
        torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-10, atol=1e-10)
        for (n, po), pr in zip(ours.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(po.grad, pr.grad, rtol=1e-10, atol=1e-10, msg=n)
    so, sr = ours.state_dict(), ref.state_dict()
    for k in ("running_mean", "running_var"):
        if k in sr and x.numel():
            torch.testing.assert_close(so[k], sr[k], rtol=1e-12, atol=1e-12, msg=k)
    if not x.numel():  # an empty batch leaves normlab's state (the count too) unchanged
        for k, v in before.items():
            assert torch.equal(so[k], v), k


@pytest.mark.parametrize("backend", [None, "reference", "triton"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 1), (2, 3, 1, 1)])
def test_group_norm_one_value_per_group_on_every_backend(shape, backend):
    """GroupNorm(3, 3): each group holds one element, its output is the bias (torch.nn's
    result); every backend computes it, gradients included."""
    torch.manual_seed(0)
    ref = tnn.GroupNorm(3, 3).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    ours = nl.GroupNorm(3, 3, backend=backend).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, dtype=D)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yr = ours(xo), ref(xr)
    torch.testing.assert_close(yo, yr, rtol=1e-12, atol=1e-12)
    dy = torch.randn(shape, dtype=D)
    yo.backward(dy)
    yr.backward(dy)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)
