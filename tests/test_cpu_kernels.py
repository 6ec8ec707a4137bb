"""The numba CPU backend on awkward shapes and layouts: output and every gradient against the
float64 oracle and torch.nn, with poisoned output buffers; which calls it takes by default;
torch.compile(fullgraph=True) of modules that use it. (The functional table runs on it too,
through the backend matrix of tests/test_backends.py.)"""

from __future__ import annotations

import pytest
import torch

import normlab.functional as F
import normlab.nn as nl
from normlab import ops
from normlab.ops import cpu_op
from tests import oracle

pytestmark = pytest.mark.skipif(not cpu_op.available(), reason="numba is not installed")

# (id, kind, shape, opts): 1, primes, 1023, channels_last memory, every kernel shape (rows,
# lines fused and merged, columns fused per sample and chunked)
CASES = [
    ("batch-NCHW-primes", "batch", (3, 5, 7, 11), {}),
    ("batch-N1-1023", "batch", (1, 2, 1023), {}),
    ("batch-1-channel", "batch", (5, 1, 13), {}),
    ("batch-channels_last", "batch", (3, 5, 7, 11), {"memory": "cl"}),
    ("batch-NLC-chunked", "batch", (2, 9001, 3), {"channel_axis": -1}),
    # columns whose rows hold whole 32-byte vectors (the output and dx passes stream them),
    # chunks of rows with a partial last one, odd H*W
    ("batch-channels_last-C24", "batch", (3, 24, 7, 11), {"memory": "cl"}),
    ("batch-NLC-64-chunked", "batch", (2, 601, 64), {"channel_axis": -1}),
    ("instance-NCL-prime", "instance", (3, 7, 1023), {}),
    ("instance-channels_last", "instance", (2, 7, 5, 3), {"memory": "cl"}),
    ("instance-NHWC-chunked", "instance", (2, 4, 3000, 23), {"channel_axis": -1}),
    ("instance-channels_last-C16", "instance", (3, 16, 9, 7), {"memory": "cl"}),
    ("instance-1x2", "instance", (2, 3, 1, 2), {}),
    ("group-NCHW-primes", "group", (3, 6, 7, 11), {"groups": 3}),
    ("group-G1", "group", (2, 5, 13), {"groups": 1}),
    ("group-channels_last", "group", (2, 8, 5, 3), {"groups": 4, "memory": "cl"}),
    ("group-NLC-chunked", "group", (2, 3000, 12), {"groups": 4, "channel_axis": -1}),
    ("group-channels_last-N1-C32", "group", (1, 32, 5, 7), {"groups": 8, "memory": "cl"}),
    ("group-channels_last-C40", "group", (2, 40, 7, 5), {"groups": 5, "memory": "cl"}),
    ("group-N1", "group", (1, 4, 3), {"groups": 2}),
    ("layer-1023", "layer", (3, 1023), {"ns": (1023,)}),
    ("layer-block", "layer", (2, 3, 5, 7), {"ns": (5, 7)}),
    ("layer-one-row", "layer", (1, 1), {"ns": (1,)}),
    ("rms-1023", "rms", (7, 1023), {"ns": (1023,)}),
    ("rms-prime-rows", "rms", (13, 3), {"ns": (3,)}),
]


def _make(kind, shape, opts, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    if opts.get("memory") == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    ax = opts.get("channel_axis", 1)
    pshape = opts["ns"] if kind in ("layer", "rms") else (shape[ax],)
    w = (torch.rand(pshape, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    b = None if kind == "rms" else torch.randn(pshape, generator=g, dtype=torch.float64).to(dtype)
    return x, w, b


def _normlab(kind, x, w, b, opts, backend="numba"):
    ax = {"channel_axis": opts["channel_axis"]} if "channel_axis" in opts else {}
    if kind == "batch":
        return F.batch_norm(x, None, None, w, b, True, backend=backend, **ax)
    if kind == "instance":
        return F.instance_norm(x, None, None, w, b, backend=backend, **ax)
    if kind == "group":
        return F.group_norm(x, opts["groups"], w, b, backend=backend, **ax)
    if kind == "layer":
        return F.layer_norm(x, opts["ns"], w, b, backend=backend)
    return F.rms_norm(x, opts["ns"], w, 1e-6, backend=backend)


def _oracle(kind, x, w, b, opts):
    ax = opts.get("channel_axis", -1 if kind in ("layer", "rms") else 1)
    if kind == "batch":
        return oracle.batch(x, w, b, channel_axis=ax)
    if kind == "instance":
        return oracle.instance(x, w, b, channel_axis=ax)
    if kind == "group":
        return oracle.group(x, opts["groups"], w, b, channel_axis=ax)
    if kind == "layer":
        return oracle.layer(x, opts["ns"], w, b, channel_axis=ax)
    return oracle.rms(x, opts["ns"], w, eps=1e-6, channel_axis=ax)


def _grads(fn, x, w, b, dy):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = fn(*leaves)
    y.backward(dy.to(y.dtype))
    return y, [None if t is None else t.grad for t in leaves]


@pytest.fixture
def poisoned(monkeypatch):
    """Every float buffer torch.empty/empty_like hands out is NaN: an element a kernel does
    not write shows up as NaN in the result."""
    real_empty, real_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(real_like(*a, **k)))


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """torch's (so the kernels') thread count: on one thread the calls run the kernels'
    serial twins (``norm.SERIAL``), on more the parallel kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_the_oracle_and_torch_nn(case, dtype, threads, poisoned):
    _, kind, shape, opts = case
    x, w, b = _make(kind, shape, opts, dtype)
    dy = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with ops.trace_backends() as ran:
        y, grads = _grads(lambda *t: _normlab(kind, *t, opts), x, w, b, dy)
    assert ran == ["numba"]
    assert y.dtype == dtype and y.stride() == x.stride()  # the layout is kept
    y64, grads64 = _grads(lambda *t: _oracle(kind, *t, opts), x.double(), w.double(),
                          None if b is None else b.double(), dy)
    oracle.close(y, y64, dtype)
    n = x.numel() // w.numel()  # terms summed into each parameter gradient
    for got, want, scale in zip(grads, grads64, (1.0, n ** 0.5, n ** 0.5), strict=True):
        if want is not None:
            assert torch.isfinite(got).all()
            oracle.close(got, want, dtype, scale=scale)
    if dtype == torch.float64:  # and torch.nn's float64 result (not an oracle of ours)
        ref = oracle.torch_nn(kind, x, w, b, channel_axis=opts.get(
            "channel_axis", -1 if kind in ("layer", "rms") else 1), groups=opts.get("groups"),
            normalized_shape=opts.get("ns"), eps=1e-6 if kind == "rms" else 1e-5)
        torch.testing.assert_close(y, ref, **oracle.tol(torch.float64))


def test_the_variance_is_stable_far_from_zero():
    """Mean 1e4, std 1e-2 in float32: E[x^2] - E[x]^2 would lose every digit of the variance
    (x^2 ~ 1e8 carries float32 rounding ~ 6, the variance is 1e-4). The float32 mean itself
    rounds to ~5e-4 (a shift of the output per group, as in torch), so the check is the
    variance (batch norm's running variance) and the output about its group mean."""
    g = torch.Generator().manual_seed(0)
    x = (1e4 + 1e-2 * torch.randn(4, 3, 50, 50, generator=g, dtype=torch.float64)).float()
    x64 = x.double()  # the float32 input's own values
    for t in (x, x.contiguous(memory_format=torch.channels_last)):  # lines, then columns
        rv = torch.zeros(3)
        F.batch_norm(t, torch.zeros(3), rv, training=True, momentum=1.0, backend="numba")
        torch.testing.assert_close(rv.double(), x64.var((0, 2, 3)), rtol=1e-4, atol=0)

    def centered(y, dims):
        return y.double() - y.double().mean(dims, keepdim=True)

    for fn, dims in ((lambda t: F.instance_norm(t, backend="numba"), (2, 3)),
                     (lambda t: F.instance_norm(t.contiguous(memory_format=torch.channels_last),
                                                backend="numba"), (2, 3)),
                     (lambda t: F.group_norm(t.contiguous(memory_format=torch.channels_last), 1,
                                             backend="numba"), (1, 2, 3)),
                     (lambda t: F.layer_norm(t, (50, 50), backend="numba"), (2, 3))):
        torch.testing.assert_close(centered(fn(x), dims), centered(fn(x64), dims), rtol=0,
                                   atol=1e-3)


@pytest.mark.parametrize("memory", ["nchw", "cl"])
def test_nan_and_inf_propagate_as_in_torch_nn(memory):
    """A NaN or an Inf in a group makes its statistics NaN in torch.nn: the output of the group
    is NaN there, and nowhere else (the first row of a block of sums and a middle one)."""
    x = torch.randn(4, 16, 6, 5, generator=torch.Generator().manual_seed(0))
    x[1, 3, 2, 2] = float("nan")
    x[2, 5, 0, 0] = float("inf")
    x[0, 9, 3, 1] = float("-inf")
    if memory == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    tnf = torch.nn.functional
    for mine, ref in (
            (F.batch_norm(x, None, None, training=True, backend="numba"),
             tnf.batch_norm(x, None, None, training=True)),
            (F.instance_norm(x, backend="numba"), tnf.instance_norm(x)),
            (F.group_norm(x, 4, backend="numba"), tnf.group_norm(x, 4))):
        assert torch.equal(mine.isnan(), ref.isnan())
        assert torch.equal(mine.isinf(), ref.isinf())
        ok = ref.isfinite()
        torch.testing.assert_close(mine[ok], ref[ok], **oracle.tol(torch.float32))


def test_threads_give_the_same_result():
    x = torch.randn(64, 513, dtype=torch.float64, requires_grad=True)
    w = torch.rand(513, dtype=torch.float64, requires_grad=True)
    before = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y = F.rms_norm(x, (513,), w, backend="numba")
            got.append((y, *torch.autograd.grad(y.sin().sum(), (x, w))))
            assert torch.get_num_threads() == n  # numba's launch leaves torch's count alone
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(a, b, **oracle.tol(torch.float64))


def test_which_calls_it_takes_by_default():
    big = torch.randn(16, 16, 64, 64)  # 1 Mi elements: Numba.MIN_NUMEL
    cl = torch.randn(16, 16, 128, 128).contiguous(memory_format=torch.channels_last)  # 4 Mi
    with ops.trace_backends() as ran:
        F.batch_norm(big, None, None, training=True)  # large float32 training batch norm
        F.batch_norm(big[:, :, :32], None, None, training=True)  # below 1 Mi: torch's kernel
        F.batch_norm(big, torch.zeros(16), torch.ones(16), training=False)  # eval: an affine map
        F.group_norm(big.bfloat16(), 4)  # no bfloat16 kernels
        F.layer_norm(torch.randn(1024, 1024), (1024,))  # torch's fused kernel is as fast
        F.rms_norm(torch.randn(1024, 1024), (1024,))
        F.group_norm(big[:, :, ::2], 4)  # strided: not read in place
        F.group_norm(big, 4)  # channels first: torch's fused forward is as fast
        F.group_norm(cl, 4)  # channels last, no backward: torch's forward is as fast
        F.group_norm(cl.requires_grad_(), 4)  # with a backward: torch's is slow
        F.group_norm(cl.detach()[:, :, :64].contiguous(memory_format=torch.channels_last)
                     .requires_grad_(), 4)  # ... but not below 4 Mi elements
        F.batch_norm(big.contiguous(memory_format=torch.channels_last), None, None,
                     training=True)  # channels last: torch's kernel is as fast
    assert ran == ["numba", "native", "native", "native", "native", "numba", "native", "native",
                   "native", "numba", "native", "native"]


def test_asked_for_by_name_it_hands_on_what_it_has_no_kernel_for():
    x = torch.randn(4, 3, 6)
    with ops.trace_backends() as ran:
        y = F.group_norm(x.bfloat16(), 3, backend="numba")
        F.batch_norm(x, torch.zeros(3), torch.ones(3), training=False, backend="numba")
        e = F.instance_norm(x[:0], backend="numba")
        s = F.group_norm(x[:, :, ::2], 3, backend="numba")
    assert ran == ["native", "native", "native", "native"]
    oracle.close_to_torch(y, oracle.group(x.double(), 3), torch.nn.functional.group_norm(
        x.bfloat16(), 3), torch.bfloat16)
    assert e.shape == (0, 3, 6)
    torch.testing.assert_close(s, torch.nn.functional.group_norm(x[:, :, ::2], 3))


def test_running_statistics_move_as_torch_nn():
    x = torch.randn(16, 8, 40, 40) * 2 + 1
    mine, ref = nl.BatchNorm2d(8, backend="numba"), torch.nn.BatchNorm2d(8)
    with ops.trace_backends() as ran:
        mine(x)
    ref(x)
    assert ran == ["numba"]
    oracle.close(mine.running_mean, ref.running_mean, torch.float32)
    oracle.close(mine.running_var, ref.running_var, torch.float32)
    assert int(mine.num_batches_tracked) == 1


@pytest.mark.slow
def test_compile_fullgraph_through_the_custom_ops():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        nl.BatchNorm2d(8, backend="numba", activation="relu"),
        nl.GroupNorm(4, 8, backend="numba"),
        torch.nn.Flatten(2),
        nl.RMSNorm(36, backend="numba"),
    )
    x = torch.randn(4, 3, 6, 6)
    ye = model(x)
    ge = torch.autograd.grad(ye.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    yc = compiled(x)
    gc = torch.autograd.grad(yc.square().sum(), list(model.parameters()))
    torch.testing.assert_close(yc, ye, **oracle.tol(torch.float32))
    for a, b in zip(gc, ge, strict=True):
        oracle.close(a, b, torch.float32, scale=10)


def test_half_precision_channels_last_instance_norm_runs_on_a_float32_copy():
    # torch's channels-last group-norm backward in bfloat16 took 8x torch.nn's instance norm;
    # with a backward to run, numba normalizes a float32 copy and casts back
    x = (torch.randn(16, 8, 96, 96) * 3 + 2).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()  # 1.2 Mi elements
    w = torch.rand(8).bfloat16().requires_grad_()
    b = torch.randn(8).bfloat16().requires_grad_()
    dy = torch.randn_like(x)
    with ops.trace_backends() as ran:
        y = F.instance_norm(x, weight=w, bias=b)
        with torch.no_grad():
            F.instance_norm(x, weight=w, bias=b)  # no backward: torch's forward is fast
    assert ran == ["numba", "native"]
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    got = torch.autograd.grad(y, (x, w, b), dy)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = oracle.instance(xd, wd, bd)
    want = torch.autograd.grad(ref, (xd, wd, bd), dy.double())
    xt, wt, bt = (t.detach().clone().requires_grad_() for t in (x, w, b))
    base = torch.nn.functional.instance_norm(xt, weight=wt, bias=bt)
    base_g = torch.autograd.grad(base, (xt, wt, bt), dy)
    oracle.close_to_torch(y, ref, base, torch.bfloat16)
    for g, r, t, what in zip(got, want, base_g, ("dx", "dweight", "dbias"), strict=True):
        assert g.dtype == torch.bfloat16
        oracle.close_to_torch(g, r, t, torch.bfloat16, what)
