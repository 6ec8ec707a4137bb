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
    # columns wider than a strip of 8 vectors, not whole vectors: plain stores, a tail
    ("instance-NHWC-C67", "instance", (3, 5, 4, 67), {"channel_axis": -1}),
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
    # the rows' output: several blocks of rows (one fence per ~16 Ki elements) and a partial
    # last one, rows of odd length (plain stores: not whole cache lines), rows shorter than
    # one vector, a row longer than a block
    ("rms-blocks-1023", "rms", (40, 1023), {"ns": (1023,)}),
    ("layer-blocks-1021", "layer", (37, 1021), {"ns": (1021,)}),
    ("rms-rows-of-5", "rms", (4099, 5), {"ns": (5,)}),
    ("layer-long-row", "layer", (3, 16411), {"ns": (16411,)}),
    # rows of whole cache lines, at least 256 long: the only rows streamed (others plain)
    ("layer-blocks-1024", "layer", (37, 1024), {"ns": (1024,)}),
    ("rms-blocks-512", "rms", (67, 512), {"ns": (512,)}),
    # over the channel of channels-first memory (timm's LayerNorm2d): columns with a weight per
    # row; primes; one sample (on 2 threads its columns split in two units, the second
    # shorter); more channels than a block of summed rows (64); one channel; one position;
    # (N, C, L)
    ("layer-channels-first-primes", "layer", (3, 5, 7, 11), {"ns": (5,), "channel_axis": 1}),
    ("rms-channels-first-N1-C67", "rms", (1, 67, 9, 13), {"ns": (67,), "channel_axis": 1}),
    ("layer-channels-first-N1-C130", "layer", (1, 130, 3, 37), {"ns": (130,),
                                                                "channel_axis": 1}),
    ("layer-channels-first-C1", "layer", (4, 1, 5, 3), {"ns": (1,), "channel_axis": 1}),
    ("rms-channels-first-P1", "rms", (6, 9, 1, 1), {"ns": (9,), "channel_axis": 1}),
    ("layer-channels-first-NCL", "layer", (2, 96, 37), {"ns": (96,), "channel_axis": 1}),
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
        return F.layer_norm(x, opts["ns"], w, b, backend=backend, **ax)
    return F.rms_norm(x, opts["ns"], w, 1e-6, backend=backend, **ax)


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



def _compiled_matches_eager(model, x, ye):
    """torch.compile(fullgraph, aot_eager) of ``model`` gives eager's output ``ye`` and its
    parameter gradients (through the custom ops, which the eager calls do not use)."""
    ge = torch.autograd.grad(ye.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    yc = compiled(x)
    gc = torch.autograd.grad(yc.square().sum(), list(model.parameters()))
    torch.testing.assert_close(yc, ye, **oracle.tol(torch.float32))
    for a, b in zip(gc, ge, strict=True):
        oracle.close(a, b, torch.float32, scale=10)

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


@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_rows_nan_and_inf_stay_in_their_row(kind, dtype, threads, poisoned):
    """A NaN or an infinity in a row shows in that row's output as in torch.nn's (NaN; an
    infinity in RMS norm makes the row's rstd 0), every other row (in the same block of
    streamed rows too) finite and right."""
    x, w, b = _make(kind, (40, 1021), {"ns": (1021,)}, dtype)
    x[3, 17], x[4, 0], x[22, 1020] = float("nan"), float("inf"), -float("inf")
    y = _normlab(kind, x, w, b, {"ns": (1021,)})
    ref = oracle.torch_nn(kind, x.double(), w.double(), None if b is None else b.double(),
                          channel_axis=-1, normalized_shape=(1021,),
                          eps=1e-6 if kind == "rms" else 1e-5)
    bad = torch.zeros(40, dtype=torch.bool)
    bad[[3, 4, 22]] = True
    assert y[bad].isnan().any(1).all()
    torch.testing.assert_close(y[bad].double(), ref[bad], equal_nan=True, rtol=0, atol=0)
    oracle.close(y[~bad], ref[~bad], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_lines_nan_and_inf_stay_in_their_channel(dtype, threads, poisoned):
    """Batch norm NCHW (the lines kernel): a NaN or an infinity makes its channel's output
    NaN, as torch.nn's; the other channels are right."""
    x, w, b = _make("batch", (3, 5, 7, 11), {}, dtype)
    x[1, 1, 2, 3], x[2, 3, 0, 0] = float("nan"), float("inf")
    y = _normlab("batch", x, w, b, {})
    ref = oracle.torch_nn("batch", x.double(), w.double(), b.double(), channel_axis=1)
    assert y[:, [1, 3]].isnan().all() and ref[:, [1, 3]].isnan().all()
    oracle.close(y[:, [0, 2, 4]], ref[:, [0, 2, 4]], dtype)


@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["1-thread", "2-threads"])
@pytest.mark.parametrize("mean", [0.0, 1.0, 1e4])
def test_the_lines_variance_is_stable_whatever_the_shift(mean, threads):
    """The lines kernel sums each line about a shift in one pass (the first line about its
    first value, later lines about the group's mean so far) where the shift is within one
    standard deviation of the line's mean, in two passes elsewhere. float32 batch norm, lines
    of 4096 whose first value is an outlier (a third of the line's squared deviations): summed
    about it in one pass the variance was 1e-5 to 1e-4 off; two passes: below 1e-7. Also
    lines of 3 values (fewer than one vector) and samples of different means."""
    g = torch.Generator().manual_seed(0)
    x = mean + 1e-2 * torch.randn(2, 2, 4096, generator=g, dtype=torch.float64)
    x[:, :, 0] += 1e-2 * 4096 ** 0.5 * 0.7
    x[1, 1] += 0.5  # channel 1: the second sample's line far from the first's mean
    short = (mean + 1e-2 * torch.randn(5, 2, 3, generator=g, dtype=torch.float64)).float()
    for sub in (x.float(), short):
        rv = torch.zeros(2)
        with ops.trace_backends() as ran:
            F.batch_norm(sub, torch.zeros(2), rv, training=True, momentum=1.0, backend="numba")
        assert ran == ["numba"]
        torch.testing.assert_close(rv.double(), sub.double().var((0, 2)), rtol=2e-6, atol=0)


@pytest.mark.parametrize("serial", [True, False], ids=["serial", "parallel"])
@pytest.mark.parametrize("mean", [0.0, 1.0, 1e4])
def test_the_rows_variance_is_stable_whatever_the_shift(mean, serial):
    """The rows kernel sums each row in one pass about the mean of its first values where that
    shift is within one standard deviation of the row's mean, in two passes elsewhere.
    float32 rows of 4096: row 0's first 16 values far out (the shift 30 standard deviations
    off: one pass about it lost ~8 bits), row 1 plain, row 2 shifted away from row 1, row 3
    constant; then rows of 3 values (fewer than the shift's 16) and of 17. The mean and the
    variance against float64 sums of the same float32 values."""
    import numba

    from normlab.kernels.cpu import norm as kn

    g = torch.Generator().manual_seed(0)
    x = mean + 1e-2 * torch.randn(4, 4096, generator=g, dtype=torch.float64)
    x[0, :16] += 0.3
    x[2] += 0.5
    x[3] = mean
    short = mean + 1e-2 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    odd = mean + 1e-2 * torch.randn(3, 17, generator=g, dtype=torch.float64)
    kern = kn.SERIAL.rows_fwd if serial else kn.rows_fwd
    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        for sub in (x.float(), short.float(), odd.float()):
            r, n = sub.shape
            w, b = torch.ones(n), torch.zeros(n)
            y = torch.empty_like(sub)
            m, rs, v = (torch.empty(r) for _ in range(3))
            kern(sub.numpy(), w.numpy(), b.numpy(), True, 1e-5, torch.zeros(()).numpy()[()],
                 y.numpy(), m.numpy(), rs.numpy(), v.numpy())
            s64 = sub.double()
            # the mean: float32 rounding of its value, and of the sums (at the spread's scale)
            torch.testing.assert_close(m.double(), s64.mean(1), rtol=1e-7, atol=1e-5 * 1e-2)
            torch.testing.assert_close(v.double(), s64.var(1, unbiased=False), rtol=2e-6,
                                       atol=1e-12)
    finally:
        numba.set_num_threads(before)


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
    big = torch.randn(16, 16, 64, 64)  # 1 Mi elements
    cl = torch.randn(16, 16, 128, 128).contiguous(memory_format=torch.channels_last)  # 4 Mi
    assert ops.dispatch.Numba.MIN_NUMEL == 1 << 18 and ops.dispatch.Numba.MIN_NUMEL_RMS == 1 << 19
    with ops.trace_backends() as ran:
        F.batch_norm(big, None, None, training=True)  # large float32 training batch norm
        F.batch_norm(big[:, :, :16].contiguous(), None, None, training=True)  # 256 Ki: numba
        F.batch_norm(big[:, :, :15].contiguous(), None, None, training=True)  # below: torch's
        F.instance_norm(big[:, :, :16].contiguous())  # 256 Ki: numba
        F.rms_norm(torch.randn(512, 1024), (1024,))  # 512 Ki: numba
        F.rms_norm(torch.randn(511, 1024), (1024,))  # below Numba.MIN_NUMEL_RMS: torch's
        F.batch_norm(big, torch.zeros(16), torch.ones(16), training=False)  # eval: an affine map
        F.group_norm(big.bfloat16(), 4)  # no bfloat16 kernels
        F.rms_norm(torch.randn(1024, 1024), (1024,))
        F.group_norm(big[:, :, ::2], 4)  # strided: not read in place
        F.group_norm(big, 4)  # channels first: torch's fused forward is as fast
        F.group_norm(cl, 4)  # channels last, from 4 Mi elements
        F.group_norm(cl.requires_grad_(), 4)  # ... with a backward too
        F.group_norm(cl.detach()[:, :, :64].contiguous(memory_format=torch.channels_last)
                     .requires_grad_(), 4)  # ... but not below 4 Mi elements
        F.batch_norm(cl, None, None, training=True)  # channels last, 16 channels: whole
        # 32-byte vectors, from Numba.MIN_NUMEL_BATCH_CL (4 Mi)
        F.batch_norm(big.contiguous(memory_format=torch.channels_last), None, None,
                     training=True)  # ... but not below it
        F.batch_norm(torch.randn(16, 12, 80, 80).contiguous(memory_format=torch.channels_last),
                     None, None, training=True)  # 12 channels: not whole vectors, torch's
        F.batch_norm(torch.randn(2, 128, 128, 128).contiguous(memory_format=torch.channels_last),
                     None, None, training=True)  # 128 channels: more than 384 bytes, torch's
        F.batch_norm(torch.randn(128, 64, 7, 7), None, None, training=True)  # lines of 49
        F.batch_norm(torch.randn(128, 64, 14, 14), None, None, training=True)  # 196: numba
        F.instance_norm(torch.randn(96, 64, 9, 9))  # instance norm's lines of 81: torch's
        F.instance_norm(torch.randn(48, 64, 10, 10))  # ... of 100: numba
        F.rms_norm(torch.randn(10486, 100), (100,))  # 1 Mi, rows of 400 bytes: numba
        F.rms_norm(torch.randn(21846, 48), (48,))  # rows of 48, below Numba.MIN_ROW: torch's
    assert ran == ["numba", "numba", "native", "numba", "numba", "native", "native", "native",
                   "numba", "native", "native", "numba", "numba", "native", "numba", "native",
                   "native", "native", "native", "numba", "native", "numba", "numba", "native"]


def test_which_layer_norms_it_takes_by_default():
    """float32 rows of at least 64 elements from 4 Mi elements, with or without a backward, at
    1 and 2 threads; torch's kernel below 4 Mi, for rows of 32, in float64, strided; over the
    channel of channels-first memory from MIN_NUMEL, float32, float64 and bfloat16."""
    x = torch.randn(4096, 1024)
    before = torch.get_num_threads()
    try:
        with ops.trace_backends() as ran:
            for n in (1, 2):
                torch.set_num_threads(n)
                F.layer_norm(x, (1024,))  # a forward alone
                F.layer_norm(x.clone().requires_grad_(), (1024,))  # with a backward
            F.layer_norm(x[:, :1016].contiguous(), (1016,))  # below 4 Mi
            F.layer_norm(torch.randn(131072, 32), (32,))  # rows of 32
            F.layer_norm(x.double().requires_grad_(), (1024,))  # float64
            F.layer_norm(x.reshape(64, 64, 32, 32)[:, :, ::2], (64,), channel_axis=1)  # strided
            # over the channel of channels-first memory (no torch kernel): from MIN_NUMEL
            F.layer_norm(x.reshape(64, 64, 32, 32).requires_grad_(), (64,), channel_axis=1)
            F.rms_norm(x[:256].reshape(16, 64, 16, 16), (64,), channel_axis=1)  # 256 Ki
            F.rms_norm(x[:255].reshape(15, 68, 16, 16), (68,), channel_axis=1)  # below
            F.layer_norm(x.reshape(64, 32, 32, 64).permute(0, 3, 1, 2), (64,),
                         channel_axis=1)  # channels last in memory: torch's kernel in place
            # float64 too (torch has no kernel to be bit for bit with), bfloat16 (its bits)
            F.layer_norm(x.double().reshape(64, 64, 32, 32), (64,), channel_axis=1)
            F.layer_norm(x.bfloat16().reshape(64, 64, 32, 32), (64,), channel_axis=1)
            F.layer_norm(x.half().reshape(64, 64, 32, 32), (64,), channel_axis=1)  # not float16
    finally:
        torch.set_num_threads(before)
    assert ran == ["numba", "numba", "numba", "numba", "native", "native", "native", "native",
                   "numba", "numba", "native", "native", "numba", "numba", "native"]


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


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_running_statistics_moved_in_the_launch_follow_torch_nn_over_steps(momentum, dtype):
    """numba's batch norm moves the running statistics in its own launch (through numpy, the
    batch counter too): several steps, the cumulative average, float64 (asked for by name)."""
    mine = nl.BatchNorm2d(6, momentum=momentum, backend="numba", dtype=dtype)
    ref = torch.nn.BatchNorm2d(6, momentum=momentum, dtype=dtype)
    with ops.trace_backends() as ran:
        for step in range(3):
            x = torch.randn(4, 6, 5, 7, dtype=dtype) * (step + 1) + step
            mine(x)
            ref(x)
    assert ran == ["numba"] * 3
    oracle.close(mine.running_mean, ref.running_mean, dtype)
    oracle.close(mine.running_var, ref.running_var, dtype)
    assert int(mine.num_batches_tracked) == 3


def test_running_statistics_moved_through_numpy_keep_autograds_checks():
    """The in-place updates outside torch's ops bump the version counters as torch's ops do
    (``dispatch.update_running``'s, which the reference backend runs): a backward through an
    eval-mode call whose running statistics a training call moved since raises, and buffers
    made in inference mode refuse a training update (as torch.nn's)."""
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    for m in (nl.BatchNorm2d(3, backend="numba"), nl.BatchNorm2d(3, backend="reference")):
        m.eval()
        y = m(x)  # saves the running statistics for its backward
        m.train()
        m(x.detach())
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()
    for make in (lambda: nl.BatchNorm2d(3, backend="numba"), lambda: torch.nn.BatchNorm2d(3)):
        with torch.inference_mode():
            m = make()
        with pytest.raises(RuntimeError, match="[Ii]nference"):
            m(x.detach())


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
    _compiled_matches_eager(model, x, ye)


# torch's channels-last group-norm backward in bfloat16 took 8x torch.nn's instance norm, and
# GroupNorm(32, 64)'s 176 ms at (32, 64, 56, 56), 15x numba's float32 kernels: with a backward to
# run and from the float32 route's size (instance norm 1 Mi, group norm 4 Mi elements), numba
# normalizes a float32 copy and casts back
HALF_CASES = {
    "instance": ((16, 8, 96, 96), lambda x, w, b: F.instance_norm(x, weight=w, bias=b),
                 lambda x, w, b: oracle.instance(x, w, b),
                 lambda x, w, b: torch.nn.functional.instance_norm(x, weight=w, bias=b)),
    "group": ((16, 64, 64, 64), lambda x, w, b: F.group_norm(x, 8, weight=w, bias=b),
              lambda x, w, b: oracle.group(x, 8, w, b),
              lambda x, w, b: torch.nn.functional.group_norm(x, 8, weight=w, bias=b)),
}


@pytest.mark.parametrize("kind", list(HALF_CASES))
def test_half_precision_channels_last_norms_run_on_a_float32_copy(kind):
    shape, norm, ref_norm, base_norm = HALF_CASES[kind]
    x = (torch.randn(shape) * 3 + 2).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.rand(shape[1]).bfloat16().requires_grad_()
    b = torch.randn(shape[1]).bfloat16().requires_grad_()
    dy = torch.randn_like(x)
    small = x.detach()[:, :, : shape[2] // 2].contiguous(memory_format=torch.channels_last)
    with ops.trace_backends() as ran:
        y = norm(x, w, b)
        with torch.no_grad():
            norm(x, w, b)  # no backward: torch's forward is fast
        norm(small.requires_grad_(), w, b)  # below the size: torch's
    assert ran == ["numba", "native", "native"]
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    got = torch.autograd.grad(y, (x, w, b), dy)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = ref_norm(xd, wd, bd)
    want = torch.autograd.grad(ref, (xd, wd, bd), dy.double())
    xt, wt, bt = (t.detach().clone().requires_grad_() for t in (x, w, b))
    base = base_norm(xt, wt, bt)
    base_g = torch.autograd.grad(base, (xt, wt, bt), dy)
    oracle.close_to_torch(y, ref, base, torch.bfloat16)
    for g, r, t, what in zip(got, want, base_g, ("dx", "dweight", "dbias"), strict=True):
        assert g.dtype == torch.bfloat16
        oracle.close_to_torch(g, r, t, torch.bfloat16, what)


CHANNEL_CASES = [c for c in CASES if "channels-first" in c[0]]


@pytest.mark.parametrize("case", CHANNEL_CASES, ids=[c[0] for c in CHANNEL_CASES])
def test_channels_kernels_in_bfloat16(case, threads, poisoned):
    """Layer/RMS norm over the channel of channels-first memory in bfloat16: the kernels read
    its bits and compute in float32; output and every gradient within torch's own error
    (``close_to_torch``: torch.nn's permute composition in bfloat16 against the float64
    oracle), poisoned outputs, 1 and 2 threads; parameters in bfloat16 and in float32."""
    _, kind, shape, opts = case
    for pdt in (torch.bfloat16, torch.float32):
        x, w, b = _make(kind, shape, opts, torch.float64)
        x = x.bfloat16()
        w, b = w.to(pdt), None if b is None else b.to(pdt)
        dy = torch.randn(shape, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3)).bfloat16()
        with ops.trace_backends() as ran:
            y, grads = _grads(lambda *t: _normlab(kind, *t, opts), x, w, b, dy)
        assert ran == ["numba"] and y.dtype == torch.bfloat16 and y.stride() == x.stride()
        y64, grads64 = _grads(lambda *t: _oracle(kind, *t, opts), x.double(), w.double(),
                              None if b is None else b.double(), dy.double())
        def base(*t, eps=1e-6 if kind == "rms" else 1e-5):
            return oracle.torch_nn(kind, t[0], t[1].to(t[0].dtype), None if t[2] is None
                                   else t[2].to(t[0].dtype), channel_axis=1,
                                   normalized_shape=opts["ns"], eps=eps)
        yb, gradsb = _grads(base, x, w, b, dy)
        oracle.close_to_torch(y, y64, yb, torch.bfloat16)
        for got, want, tb, what in zip(grads, grads64, gradsb, ("dx", "dweight", "dbias"),
                                       strict=True):
            if want is not None:
                assert got.dtype == pdt if what != "dx" else got.dtype == torch.bfloat16
                assert torch.isfinite(got).all()
                oracle.close_to_torch(got, want, tb, torch.bfloat16, what)


# ---------------------------------------------------------------------------------------------
# the pointwise kinds (DyT, Derf): normlab.kernels.cpu.pointwise, our own tanh and erf


def _ulps32(got, want):
    """|got - want| in units in the last place of float32 at ``want`` (float64 arrays)."""
    import numpy as np

    return np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)


@pytest.mark.parametrize("kind,fn,bound", [(0, torch.tanh, 1.5), (1, torch.erf, 1.5)],
                         ids=["tanh", "erf"])
def test_tanh_and_erf_approximations_over_every_bfloat16_and_a_float32_sweep(kind, fn, bound):
    """Every one of the 65536 bfloat16 values (as float32: all the kernels see in bfloat16) and
    a dense float32 sweep of [-12, 12] (2M points, both pieces and their joins): the float32
    result within ``bound`` float32 ulps of the float64 value; NaN stays NaN, +-Inf gives +-1,
    +-0 gives +-0. (Measured: tanh 0.93 / 1.33 ulps, erf 0.99 / 1.23;
    the versions before 2026-12-03 read 0.93 / 1.31 and 0.99 / 1.32.)"""
    import numpy as np

    from normlab.kernels.cpu import pointwise as kp

    every = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)
    sweep = np.linspace(-12, 12, 2_000_001, dtype=np.float32)
    for x in (every, sweep):
        out = np.full_like(x, np.nan)
        kp.squash_f32(x, kind, out)
        want = fn(torch.from_numpy(x).double()).numpy()
        assert np.array_equal(np.isnan(out), np.isnan(x))
        ok = np.isfinite(x) & (np.abs(want) > 1e-37)
        assert _ulps32(out[ok].astype(np.float64), want[ok]).max() <= bound
        tiny = np.isfinite(x) & ~ok  # near and below the denormals: ulps of 1e-37 (2^-146)
        assert np.abs(out[tiny] - want[tiny]).max() <= bound * 2.0 ** -146
    special = np.array([np.inf, -np.inf, 0.0, -0.0, np.nan], dtype=np.float32)
    out = np.empty_like(special)
    kp.squash_f32(special, kind, out)
    assert out[0] == 1.0 and out[1] == -1.0 and out[2] == 0.0 and out[3] == 0.0
    assert np.signbit(out[3]) and not np.signbit(out[2]) and np.isnan(out[4])


# (kind, shape, normalized_shape, channel_axis, memory): 1, primes, 1023, the rows and the
# lines reading (channels first), a block of two dims, channels last (rows of C)
PW_CASES = [
    ("dyt", (1, 1), (1,), -1, None),
    ("dyt", (37, 13), (13,), -1, None),
    ("dyt", (3, 1023), (1023,), -1, None),
    ("dyt", (2, 3, 4), (3, 4), -1, None),
    ("dyt", (2, 5, 3, 7), (5,), 1, None),
    ("dyt", (2, 5, 3, 7), (5,), 1, "cl"),
    ("dyt", (1, 3, 1, 1), (3,), 1, None),
    ("derf", (5, 11), (11,), -1, None),
    ("derf", (2, 3, 5, 2), (3, 5), 1, None),
    ("derf", (3, 7, 2, 2), (7,), 1, "cl"),
    ("derf", (67, 1031), (1031,), -1, None),  # more rows than the backward's blocks
    ("dyt", (5, 2309), (2309,), -1, None),  # three runs of the backward's row sums, a tail
]


def _pw_inputs(kind, shape, ns, memory, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.3).to(dtype)
    if memory == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.rand(ns, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    b = torch.randn(ns, generator=g, dtype=torch.float64).to(dtype)
    alpha = torch.tensor([0.7], dtype=torch.float64).to(dtype)
    shift = torch.tensor([-0.2], dtype=torch.float64).to(dtype) if kind == "derf" else None
    return x, alpha, shift, w, b


def _pw_call(kind, x, alpha, shift, w, b, ns, axis, backend, residual=None, activation=None):
    kw = dict(channel_axis=axis, residual=residual, activation=activation, backend=backend)
    if kind == "dyt":
        return F.dynamic_tanh(x, ns, alpha, w, b, **kw)
    return F.derf(x, ns, alpha, shift, w, b, **kw)


def _pw_oracle(kind, x, alpha, shift, w, b, ns, axis, residual=None, activation=None):
    y = (oracle.dyt(x, ns, alpha, w, b, axis) if kind == "dyt"
         else oracle.derf(x, ns, alpha, shift, w, b, axis))
    return oracle.epilogue(y, residual, activation)


def _within_one_ulp_bf16(got, want):
    """bfloat16: within one unit in the last place of the float64 value (computed in float32,
    rounded once); NaN exactly where the float64 value is NaN."""
    w = want.double()
    assert torch.equal(got.isnan(), w.isnan())
    ok = ~w.isnan()
    w, g = w[ok], got.double()[ok]
    ulp = torch.pow(2.0, torch.floor(torch.log2(w.abs().clamp_min(2.0 ** -126))) - 7)
    err = torch.where(g == w, 0.0, (g - w).abs())  # Inf == Inf
    assert (err <= ulp).all(), f"max error {(err / ulp).max().item():.2f} ulps"


def _pw_check(kind, shape, ns, axis, memory, dtype, residual, activation, nonfinite=False):
    x, alpha, shift, w, b = _pw_inputs(kind, shape, ns, memory, dtype)
    if nonfinite and x.numel() >= 3:
        flat = x.view(-1) if x.is_contiguous() else x.permute(0, 2, 3, 1).view(-1)
        flat[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=dtype)
    r = None
    if residual:
        r = torch.randn(shape, dtype=torch.float64).to(dtype)
        r = torch.empty_like(x).copy_(r)  # in x's layout: read like x
    dy = torch.randn(shape, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(3)).to(dtype)
    if activation == "relu":  # at ReLU's kink float32 and float64 may take different sides:
        pre = _pw_oracle(kind, *(None if t is None else t.double()  # no gradient flows there
                                 for t in (x, alpha, shift, w, b)), ns, axis,
                         None if r is None else r.double())
        dy = torch.where(pre.abs() < 1e-3, 0.0, dy.double()).to(dtype)
    leaves = [None if t is None else t.detach().clone().requires_grad_()
              for t in (x, alpha, shift, w, b, r)]
    with ops.trace_backends() as ran:
        y = _pw_call(kind, *leaves[:5], ns, axis, "numba", leaves[5], activation)
    assert ran == ["numba"]
    assert y.dtype == dtype and y.stride() == x.stride()
    live = [t for t in leaves if t is not None]
    got = torch.autograd.grad(y, live, dy)
    d = [None if t is None else t.detach().double().requires_grad_()
         for t in (x, alpha, shift, w, b, r)]
    y64 = _pw_oracle(kind, *d[:5], ns, axis, d[5], activation)
    want = torch.autograd.grad(y64, [t for t in d if t is not None], dy.double())
    if dtype == torch.bfloat16 and r is None:
        _within_one_ulp_bf16(y, y64)
    elif dtype == torch.bfloat16:  # w t + b + r in float32 can cancel: as the native path
        native = _pw_call(kind, x, alpha, shift, w, b, ns, axis, "native", r, activation)
        oracle.close_to_torch(y, y64, native, dtype, "output")
    else:
        torch.testing.assert_close(y.double(), y64, rtol=4e-7, atol=4e-7, equal_nan=True)
    assert got[0].stride() == x.stride()
    for g, e, t in zip(got, want, live, strict=True):
        assert g.dtype == t.dtype and g.shape == t.shape
        if nonfinite:  # NaN where the oracle's gradient is NaN, the rest as finite
            assert torch.equal(g.isnan(), e.isnan()) or g.numel() < x.numel()
            continue
        assert not g.isnan().any()  # every element written, every partial sum too
        n = max(1, x.numel() // g.numel())  # a parameter gradient sums n terms
        oracle.close(g, e, dtype, max(1.0, n ** 0.5 / 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("epilogue", [(False, None), (True, None), (True, "relu"),
                                      (False, "relu")],
                         ids=["plain", "residual", "residual+relu", "relu"])
@pytest.mark.parametrize("case", PW_CASES,
                         ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}-axis{c[3]}-"
                                       f"{c[4] or 'dense'}")
def test_pointwise_kernels_match_the_float64_oracle(case, epilogue, dtype, threads, poisoned):
    """Output (bfloat16: within 1 ulp of float64; with a residual, whose sum in float32 can
    cancel, at most twice the native path's error) and the gradients of x, alpha, shift, weight,
    bias and the residual against float64 autograd of the formula (gradcheck's reference: the
    kernels take no float64, so this is the check), poisoned outputs, 1 and 2 threads."""
    kind, shape, ns, axis, memory = case
    _pw_check(kind, shape, ns, axis, memory, dtype, *epilogue)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("case", [PW_CASES[1], PW_CASES[4], PW_CASES[8]],
                         ids=["dyt-rows", "dyt-lines", "derf-lines"])
def test_pointwise_kernels_keep_nan_and_inf(case, dtype, threads, poisoned):
    """NaN, +Inf and -Inf inputs: NaN out where the float64 formula gives NaN, tanh(+-Inf) =
    +-1 (so w + b), and the other elements as before."""
    kind, shape, ns, axis, memory = case
    _pw_check(kind, shape, ns, axis, memory, dtype, False, None, nonfinite=True)


def test_pointwise_rounds_bfloat16_to_nearest_even():
    """A float32 result exactly halfway between two bfloat16 values rounds to the even one,
    just above it rounds up: with w = 1, b = 0, alpha = 1, x = 0 and a residual, the output is
    tanh(0) + r = r exactly, so r decides; r itself is bfloat16, so the sum is exact. Instead,
    pick outputs w * 1 + b at |x| large (tanh = 1 exactly in float32): w * 1 + b with w, b
    bfloat16 is exact in float32 and lands where we choose."""
    n = 1 << 20  # a call big enough to be numba's by default too
    x = torch.full((n // 4, 4), 50.0, dtype=torch.bfloat16)  # tanh(50) == 1.0 in float32
    w = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.bfloat16)
    # 1 + 2^-8: halfway between 1 and 1 + 2^-7 (to even: 1); 1 + 3 * 2^-8: halfway between
    # 1 + 2^-7 and 1 + 2^-6 (to even: 1 + 2^-6); 1 + 2^-8 + 2^-16: above halfway (up)
    b = torch.tensor([2.0 ** -8, 3 * 2.0 ** -8, 2.0 ** -8 + 2.0 ** -16, -(2.0 ** -8)],
                     dtype=torch.float32)
    with ops.trace_backends() as ran:
        y = F.dynamic_tanh(x, (4,), torch.tensor([1.0]), w, b)
    assert ran == ["numba"]
    want = torch.tensor([1.0, 1 + 2.0 ** -6, 1 + 2.0 ** -7, -1.0], dtype=torch.float64)
    assert torch.equal(y[0].double(), want) and torch.equal(y[-1].double(), want)


def test_pointwise_which_calls_it_takes_and_hands_on():
    """By default: bfloat16 and float32 DyT/Derf from 256 Ki elements; not below, not float64.
    Asked for by name it hands on (to native) a dtype, an activation, a residual in another
    layout, an input it does not read in place, and an empty input."""
    big = torch.randn(1024, 1024)
    a, s = torch.tensor([0.5]), torch.tensor([0.1])
    with ops.trace_backends() as ran:
        F.dynamic_tanh(big.bfloat16(), (1024,), a, None, None)
        F.derf(big, (1024,), a, s, None, None)
        F.dynamic_tanh(big[:256], (1024,), a, None, None)  # 256 Ki
        F.dynamic_tanh(big[:255], (1024,), a, None, None)  # below
        F.dynamic_tanh(big.double(), (1024,), a.double(), None, None)  # float64
    assert ran == ["numba", "numba", "numba", "native", "native"]
    x = torch.randn(4, 6, 5)
    with ops.trace_backends() as ran:
        outs = [
            F.dynamic_tanh(x.half(), (5,), a, None, None, backend="numba"),
            F.dynamic_tanh(x, (5,), a, None, None, activation="gelu", backend="numba"),
            F.dynamic_tanh(x, (5,), a, None, None, residual=x.transpose(0, 1).contiguous()
                           .transpose(0, 1), backend="numba"),
            F.dynamic_tanh(x[:, :, ::2], (3,), a, None, None, backend="numba"),  # strided
            F.dynamic_tanh(x[:0], (5,), a, None, None, backend="numba"),
        ]
    assert ran == ["native"] * 5
    torch.testing.assert_close(outs[3], torch.tanh(0.5 * x[:, :, ::2]))
    torch.testing.assert_close(outs[1], torch.nn.functional.gelu(torch.tanh(0.5 * x)))
    with pytest.raises(ValueError, match="backend='numba' cannot run this call .*not on the CPU"):
        F.dynamic_tanh(torch.randn(2, 3, device="meta"), (3,), torch.tensor([0.5], device="meta"),
                       None, None, backend="numba")


@pytest.mark.slow
def test_pointwise_compile_fullgraph_through_the_custom_ops():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        nl.DynamicTanh(8, channel_axis=1, backend="numba", activation="relu"),
        torch.nn.Flatten(2),
        nl.Derf(36, backend="numba"),
    )
    with torch.no_grad():
        for m in (model[1], model[3]):
            for p in m.parameters():
                p.add_(torch.rand_like(p) * 0.5)
    x = torch.randn(4, 3, 6, 6)
    with ops.trace_backends() as ran:
        ye = model(x)
    assert ran == ["numba", "numba"]
    _compiled_matches_eager(model, x, ye)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("kind", ["dyt", "derf"])
def test_pointwise_double_backward_matches_the_float64_oracle(kind, activation):
    """A graph of the backward (create_graph=True: a gradient penalty) is differentiated like the
    float64 formula's, not cut (numba is the default for large inputs, where the native path had
    a double backward): loss = sum(y * c) + sum(dL/dx ** 2) for every leaf."""
    ns = (6,)
    x, alpha, shift, w, b = _pw_inputs(kind, (4, 5, 6), ns, None, torch.float32)
    r = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(5))
    c = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(6))

    def grads(tensors, backend):
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
        if backend is None:
            y = _pw_oracle(kind, *leaves[:5], ns, -1, leaves[5], activation)
        else:
            with ops.trace_backends() as ran:
                y = _pw_call(kind, *leaves[:5], ns, -1, backend, leaves[5], activation)
            assert ran == [backend]
        gx, = torch.autograd.grad((y * c.to(y.dtype)).sum(), leaves[0], create_graph=True)
        live = [t for t in leaves if t is not None]
        return torch.autograd.grad((y * c.to(y.dtype)).sum() + gx.square().sum(), live)

    got = grads((x, alpha, shift, w, b, r), "numba")
    want = grads([None if t is None else t.double() for t in (x, alpha, shift, w, b, r)], None)
    for g, e in zip(got, want, strict=True):
        oracle.close(g, e, torch.float32, 4.0)


_DOUBLE_BACKWARD = ["batch-NCHW-primes", "batch-NLC-64-chunked", "instance-channels_last",
                    "group-NCHW-primes", "layer-1023", "rms-1023"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in _DOUBLE_BACKWARD],
                         ids=_DOUBLE_BACKWARD)
def test_norm_double_backward_matches_the_float64_oracle(case, dtype):
    """A graph of the backward (create_graph=True: a gradient penalty) through the numba
    kernels (rows, lines, columns) is differentiated like the float64 oracle's, not cut: the
    kernels' backward is not differentiable, so it takes the reference math there. loss =
    sum(y * c) + sum(dL/dx ** 2), the gradients of every leaf (before the fix the second
    term's graph was cut: wrong weight gradients, with no error)."""
    _, kind, shape, opts = case
    x, w, b = _make(kind, shape, opts, dtype)
    c = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def grads(fn, tensors):
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
        y = fn(*leaves)
        first = (y * c.to(y.dtype)).sum()
        gx, = torch.autograd.grad(first, leaves[0], create_graph=True)
        return torch.autograd.grad(first + gx.square().sum(),
                                   [t for t in leaves if t is not None])

    with ops.trace_backends() as ran:
        got = grads(lambda *t: _normlab(kind, *t, opts), (x, w, b))
    assert ran == ["numba"]
    want = grads(lambda *t: _oracle(kind, *t, opts),
                 [None if t is None else t.double() for t in (x, w, b)])
    for g, e in zip(got, want, strict=True):
        oracle.close(g, e, dtype, scale=10.0)


@pytest.mark.parametrize("shape, channels_last", [((4, 16, 8, 8), True), ((64, 24), False),
                                                  ((4, 16, 8, 8), False)])
def test_batch_norm_running_statistics_under_a_non_reentrant_checkpoint(shape, channels_last):
    """A non-reentrant checkpoint recomputes the forward in the backward and stops once the
    Function has saved its tensors: torch.nn's batch norm moves the running statistics and the
    count on both passes. With the channels innermost the numba path moved them after its
    Function returned, so the recomputation counted the batch without moving them (running_var
    2.4e-3 off torch.nn at (16, 64, 32, 32) channels-last, momentum's average out of step)."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    c = shape[1]
    ours = nl.BatchNorm2d(c, backend="numba") if len(shape) == 4 else nl.BatchNorm1d(
        c, backend="numba")
    ref = torch.nn.BatchNorm2d(c) if len(shape) == 4 else torch.nn.BatchNorm1d(c)
    for momentum in (0.1, None):
        ours.momentum = ref.momentum = momentum
        x = torch.randn(shape) * 2 + 1
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for m in (ours, ref):
            xg = x.clone().requires_grad_()
            checkpoint(m, xg, use_reentrant=False).square().sum().backward()
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()
        torch.testing.assert_close(ours.running_mean, ref.running_mean)
        torch.testing.assert_close(ours.running_var, ref.running_var)
