"""Masks for padded sequences: each masked kind against the unmasked computation on the real
positions only (an independent route: gathering or cutting the real data)."""

from __future__ import annotations

import pytest
import torch

import normlab
import normlab.functional as F
import normlab.nn as nl
from tests import oracle
from tests.matrix import BACKENDS, on_backend

D = torch.float64
LENGTHS = [5, 2, 7, 1]


def _padded(c=3, lengths=LENGTHS, channel_axis=1, pad=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, t = len(lengths), max(lengths)
    x = torch.randn(n, c, t, generator=g, dtype=D) * 2 + 1
    mask = normlab.lengths_to_mask(torch.tensor(lengths), t)
    x = torch.where(mask[:, None, :], x, torch.full_like(x, pad))
    if channel_axis == -1:
        x = x.transpose(1, 2).contiguous()
    return x, mask


def test_lengths_to_mask():
    m = normlab.lengths_to_mask(torch.tensor([2, 0, 3]), 4)
    assert m.tolist() == [[True, True, False, False], [False] * 4, [True, True, True, False]]
    with pytest.raises(ValueError, match="max_len=2 is shorter than the longest length 3"):
        normlab.lengths_to_mask([1, 3], 2)
    with pytest.raises(ValueError, match="lengths must be a 1D integer tensor"):
        normlab.lengths_to_mask(torch.tensor([1.5]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_masked_batch_norm_equals_batch_norm_on_real_positions(channel_axis, backend):
    x, mask = _padded(channel_axis=channel_axis, pad=float("nan"))  # padding never matters
    m = nl.BatchNorm1d(3, channel_axis=channel_axis, momentum=0.3, dtype=D, backend=backend)
    ref = torch.nn.BatchNorm1d(3, momentum=0.3, dtype=D)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
        m.bias.copy_(torch.tensor([1.0, -1.0, 0.0]))
    ref.load_state_dict(m.state_dict())
    xs = x.clone().requires_grad_()
    y = on_backend(backend, lambda: m(xs, mask=mask))
    xl = xs if channel_axis == -1 else xs.transpose(1, 2)  # N, L, C
    real = xl.detach()[mask].clone().requires_grad_()  # M, C: only the real positions
    want = ref(real)
    yl = y if channel_axis == -1 else y.transpose(1, 2)
    torch.testing.assert_close(yl[mask], want)
    assert (yl[~mask] == 0).all()
    dy = torch.randn(y.shape, dtype=D)
    y.backward(dy)
    dyl = dy if channel_axis == -1 else dy.transpose(1, 2)
    want.backward(dyl[mask])
    gl = xs.grad if channel_axis == -1 else xs.grad.transpose(1, 2)
    torch.testing.assert_close(gl[mask], real.grad)
    assert (gl[~mask] == 0).all()
    torch.testing.assert_close(m.running_mean, ref.running_mean)
    torch.testing.assert_close(m.running_var, ref.running_var)
    torch.testing.assert_close(m.weight.grad, ref.weight.grad)
    torch.testing.assert_close(m.bias.grad, ref.bias.grad)
    torch.testing.assert_close(m.running_mean, ref.running_mean)
    torch.testing.assert_close(m.running_var, ref.running_var)
    m.eval()
    ref.eval()
    ye = m(x, mask=mask)
    yel = ye if channel_axis == -1 else ye.transpose(1, 2)
    torch.testing.assert_close(yel[mask], ref(real.detach()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["instance", "group", "layer", "rms"])
def test_masked_per_sample_norms_equal_the_cut_sequences(kind, backend):
    c = 4
    x, mask = _padded(c=c, pad=1e6)
    t = x.shape[2]
    w = torch.linspace(0.5, 2, c * t, dtype=D).reshape(c, t)
    b = torch.linspace(-1, 1, c * t, dtype=D).reshape(c, t)
    xs = x.clone().requires_grad_()

    def run(inp, msk, length, be=None):
        if kind == "instance":
            return F.instance_norm(inp, weight=w[:, 0], bias=b[:, 0], mask=msk, backend=be)
        if kind == "group":
            return F.group_norm(inp, 2, w[:, 0], b[:, 0], mask=msk, backend=be)
        if kind == "layer":  # the block (C, L) starting at axis 1: covers the positions
            return F.layer_norm(inp, (c, length), w[:, :length], b[:, :length],
                                channel_axis=1, mask=msk, backend=be)
        return F.rms_norm(inp, (c, length), w[:, :length], 1e-6, channel_axis=1, mask=msk,
                          backend=be)

    y = on_backend(backend, lambda: run(xs, mask, t, backend))
    dy = torch.randn(x.shape, dtype=D)
    y.backward(dy)
    for i, n in enumerate(LENGTHS):
        if kind == "instance" and n == 1:  # one element per group normalizes to 0: the bias
            torch.testing.assert_close(y[i, :, 0], b[:, 0])
            continue
        cut = x[i:i + 1, :, :n].clone().requires_grad_()
        want = run(cut, None, n)
        torch.testing.assert_close(y[i:i + 1, :, :n], want)
        assert (y[i, :, n:] == 0).all()
        want.backward(dy[i:i + 1, :, :n])
        torch.testing.assert_close(xs.grad[i:i + 1, :, :n], cut.grad)
        assert (xs.grad[i, :, n:] == 0).all()


def test_all_padding_sequence_gives_zeros_and_leaves_running_stats():
    x, mask = _padded(lengths=[3, 0, 4], pad=float("nan"))
    m = nl.InstanceNorm1d(3, track_running_stats=True, affine=True)
    m.double()
    y = m(x, mask=mask)
    assert torch.isfinite(y).all() and (y[1] == 0).all()
    bn = nl.BatchNorm1d(3).double()
    before = bn.running_mean.clone(), bn.running_var.clone()
    y = bn(x, mask=torch.zeros_like(mask))
    assert (y == 0).all()
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    inst = nl.InstanceNorm1d(3, track_running_stats=True).double()
    inst(x, mask=torch.zeros_like(mask))
    assert torch.equal(inst.running_mean, torch.zeros(3, dtype=D))


def test_masked_instance_running_stats_average_real_sequences():
    x, mask = _padded(pad=float("nan"))
    m = nl.InstanceNorm1d(3, track_running_stats=True, momentum=1.0).double()
    m(x, mask=mask)
    # momentum 1: the running stats are the average over the sequences with >= 2 real values
    stats = [torch.var_mean(x[i, :, :n], 1, correction=1) for i, n in enumerate(LENGTHS)
             if n > 1]
    torch.testing.assert_close(m.running_mean, torch.stack([s[1] for s in stats]).mean(0))
    torch.testing.assert_close(m.running_var, torch.stack([s[0] for s in stats]).mean(0))


@pytest.mark.parametrize("fn", [
    lambda x, m: F.batch_norm(x, None, None, training=True, mask=m, activation="silu"),
    lambda x, m: F.group_norm(x, 3, mask=m),
    lambda x, m: F.layer_norm(x, (3, 7), channel_axis=1, mask=m),
], ids=["batch", "group", "layer"])
def test_masked_gradcheck_and_gradgradcheck(fn):
    x, mask = _padded(lengths=[4, 2, 7])
    x = x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, mask), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fn(t, mask), (x,))


def test_bad_masks():
    x, mask = _padded()
    with pytest.raises(TypeError, match=r"mask must be a bool tensor .* got torch.int64"):
        F.batch_norm(x, None, None, training=True, mask=mask.long())
    with pytest.raises(ValueError, match=r"mask must have the input's shape without its "
                                         r"channel axis \(4, 7\), got \(4, 6\)"):
        F.group_norm(x, 3, mask=mask[:, :6])
    with pytest.raises(TypeError, match=r"mask must be a bool tensor"):
        nl.LayerNorm(7, dtype=D)(x, mask=[[True]])
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when "
                                         "training, .* with 1 real position"):
        one = torch.zeros_like(mask)
        one[0, 0] = True
        F.batch_norm(x, None, None, training=True, mask=one)


def test_masked_adain_equals_adain_on_the_real_positions():
    g = torch.Generator().manual_seed(3)
    content = torch.randn(2, 3, 8, generator=g, dtype=D) * 2 + 1
    style = torch.randn(2, 3, 6, generator=g, dtype=D) * 0.5 - 2
    cmask = normlab.lengths_to_mask(torch.tensor([8, 5]), 8)
    smask = normlab.lengths_to_mask(torch.tensor([3, 6]), 6)
    content = torch.where(cmask[:, None], content, float("nan"))  # padding is never read
    style = torch.where(smask[:, None], style, float("inf"))
    y = nl.AdaptiveInstanceNorm(3).double()(content, style, content_mask=cmask,
                                            style_mask=smask)
    for i, (nc, ns) in enumerate(((8, 3), (5, 6))):
        want = F.adaptive_instance_norm(content[i:i + 1, :, :nc], style[i:i + 1, :, :ns])
        torch.testing.assert_close(y[i:i + 1, :, :nc], want)
        assert (y[i, :, nc:] == 0).all()


@pytest.mark.parametrize("kind", ["batch", "instance", "group"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channel_axis=-1"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_fast_masked_path_equals_the_where_path(kind, layout, dtype):
    """Finite padding takes the multiply-by-mask Function; NaN padding forces the ``torch.where``
    reference path. Both must give the same outputs and gradients on a 4-D input with a 2-D
    positions mask (awkward sizes: 6 channels in 3 groups, 5 x 3 positions)."""
    g = torch.Generator().manual_seed(1)
    n, c, h, w = 3, 6, 5, 3
    x = torch.randn(n, c, h, w, generator=g, dtype=D) * 3 + 2
    mask = torch.rand(n, h, w, generator=g) > 0.4
    mask[0, 0, 0] = mask[0, 1, 1] = True
    axis = 1
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "channel_axis=-1":
        x, axis = x.permute(0, 2, 3, 1).contiguous(), -1
    pdt = torch.float32 if dtype == torch.float16 else dtype  # torch's mixed-precision rule
    wt = torch.randn(c, generator=g, dtype=D).to(pdt)
    bs = torch.randn(c, generator=g, dtype=D).to(pdt)
    dy = torch.randn(x.shape, generator=g, dtype=D).to(dtype)
    real = mask.unsqueeze(axis % 4).expand(x.shape)

    def run(pad):
        xi = torch.where(real, x, torch.full_like(x, pad)).to(dtype).requires_grad_()
        if layout == "channels_last":
            xi = xi.detach().to(memory_format=torch.channels_last).requires_grad_()
        wi, bi = wt.clone().requires_grad_(), bs.clone().requires_grad_()
        with normlab.ops.trace_backends() as ran:
            if kind == "batch":
                y = F.batch_norm(xi, None, None, wi, bi, training=True, channel_axis=axis,
                                 mask=mask)
            elif kind == "instance":
                y = F.instance_norm(xi, weight=wi, bias=bi, channel_axis=axis, mask=mask)
            else:
                y = F.group_norm(xi, 3, wi, bi, channel_axis=axis, mask=mask)
        y.backward(dy)
        runs.append(ran)
        return y, xi.grad, wi.grad, bi.grad

    runs = []
    fast, slow = run(1e3), run(float("nan"))
    assert runs == [["masked"], ["reference"]]  # NaN padding: handed on to the where path
    tol = oracle.tol(dtype)
    assert fast[0].stride() == x.stride() and fast[0].dtype == dtype
    for a, b in zip(fast, slow, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **tol)
    assert (fast[0][~real] == 0).all() and (fast[1][~real] == 0).all()


@pytest.mark.parametrize("kind", ["instance", "group"])
def test_fast_masked_path_double_backward(kind):
    x, mask = _padded(c=4, lengths=[4, 2, 7])
    x = x.requires_grad_()
    w = torch.randn(4, dtype=D, requires_grad=True)
    if kind == "instance":
        def fn(t, wt):
            return F.instance_norm(t, weight=wt, mask=mask)
    else:
        def fn(t, wt):
            return F.group_norm(t, 2, wt, mask=mask)
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def _batches():
    """Masked (N, 3, T) batches: partly padded, all padding, one with a single real value in
    each sequence (instance norm has no statistics there), an empty one, partly padded again."""
    g = torch.Generator().manual_seed(5)
    out = []
    for lengths in ([5, 2, 7, 1], [0, 0, 0], [1, 1], [], [3, 6], [4, 4, 4]):
        n, t = len(lengths), 7
        x = torch.randn(n, 3, t, generator=g, dtype=D) * (len(out) + 1) + len(out)
        mask = normlab.lengths_to_mask(torch.tensor(lengths, dtype=torch.long), t)
        out.append((torch.where(mask[:, None], x, float("nan")), mask, lengths))
    return out


def _run(module, compiled):
    step = torch.compile(module, fullgraph=True, backend="eager") if compiled else module
    for x, mask, _ in _batches():
        step(x, mask=mask)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["eager", "compiled"])
def test_masked_batch_norm_cumulative_average_counts_only_real_batches(compiled):
    torch._dynamo.reset()
    m = nl.BatchNorm1d(3, momentum=None, dtype=D)
    _run(m, compiled)
    ref = torch.nn.BatchNorm1d(3, momentum=None, dtype=D)
    for x, mask, lengths in _batches():  # torch.nn on the real positions of the real batches
        if sum(lengths) > 1:
            ref(x.transpose(1, 2)[mask])
    assert ref.num_batches_tracked.item() == 4
    assert m.num_batches_tracked.item() == 4
    torch.testing.assert_close(m.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.running_var, ref.running_var, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["eager", "compiled"])
def test_masked_instance_norm_cumulative_average_counts_only_real_batches(compiled):
    torch._dynamo.reset()
    m = nl.InstanceNorm1d(3, momentum=None, track_running_stats=True, dtype=D)
    _run(m, compiled)
    # by hand: per batch, the average over its sequences with >= 2 real values of their mean
    # and unbiased variance; the running statistics are the plain average over those batches
    means, vars_ = [], []
    for x, _, lengths in _batches():
        stats = [torch.var_mean(x[i, :, :n], 1, correction=1) for i, n in enumerate(lengths)
                 if n > 1]
        if stats:
            vars_.append(torch.stack([s[0] for s in stats]).mean(0))
            means.append(torch.stack([s[1] for s in stats]).mean(0))
    assert len(means) == 3
    assert m.num_batches_tracked.item() == 3
    torch.testing.assert_close(m.running_mean, torch.stack(means).mean(0), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(m.running_var, torch.stack(vars_).mean(0), rtol=1e-12,
                               atol=1e-12)


def test_refused_masked_batch_leaves_the_count():
    m = nl.BatchNorm1d(3, momentum=None, dtype=D)
    x, mask = _padded(lengths=[1, 0, 0])
    with pytest.raises(ValueError, match="with 1 real position"):
        m(x, mask=mask)
    assert m.num_batches_tracked.item() == 0


def test_masked_norms_under_torch_func_and_forward_mode_ad():
    """The masked backend's autograd Function has no setup_context or jvp: batch and instance
    norm with a mask raised under torch.func.grad/jvp and forward-mode AD. They run the
    reference's masked math there; compared with that math by name (``backend="reference"``,
    plain autograd) outside any transform."""
    fwad = torch.autograd.forward_ad
    torch.manual_seed(0)
    x, t = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    # (no running statistics: torch.func refuses their in-place update, as for torch.nn's)
    for make in (lambda b: nl.BatchNorm1d(8, channel_axis=-1, track_running_stats=False,
                                          backend=b),
                 lambda b: nl.InstanceNorm1d(8, channel_axis=-1, affine=True, backend=b)):
        m, ref = make(None), make("reference")
        with normlab.ops.trace_backends() as ran:
            m(x, mask=mask)
        assert ran == ["masked"]  # outside: masked, and the choice cached
        with fwad.dual_level(), normlab.ops.trace_backends() as ran:
            got = fwad.unpack_dual(m(fwad.make_dual(x, t), mask=mask)).tangent
        assert ran == ["reference"]
        want = torch.autograd.functional.jvp(lambda x, ref=ref: ref(x, mask=mask), (x,), (t,))[1]
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(torch.func.jvp(lambda x, m=m: m(x, mask=mask), (x,), (t,))[1],
                                   want)
        got = torch.func.grad(lambda x, m=m: m(x, mask=mask).sin().sum())(x)
        xr = x.clone().requires_grad_(True)
        ref(xr, mask=mask).sin().sum().backward()
        torch.testing.assert_close(got, xr.grad)
