"""Every function, both backends, against the independent float64 oracle: outputs and every
gradient, on awkward shapes, both channel axes, with and without the fused epilogue."""

from __future__ import annotations

import pytest
import torch

import normlab.functional as F
from tests import oracle

BACKENDS = ["native", "reference"]
DY_SEED = 1  # the upstream gradient is seeded too: every run checks the same numbers

# (id, kind, input shape, options); options: channel_axis, groups, ns (normalized_shape)
CASES = [
    ("batch-NC", "batch", (7, 5), {}),
    ("batch-NCL-prime", "batch", (3, 5, 7), {}),
    ("batch-NCHW", "batch", (2, 3, 5, 7), {}),
    ("batch-NCDHW", "batch", (2, 3, 2, 3, 5), {}),
    ("batch-N1-long", "batch", (1, 3, 1023), {}),
    ("batch-NHWC", "batch", (2, 5, 7, 3), {"channel_axis": -1}),
    ("batch-NLC", "batch", (3, 7, 5), {"channel_axis": -1}),
    ("instance-NCL", "instance", (2, 3, 7), {}),
    ("instance-NCHW", "instance", (3, 5, 4, 1), {}),
    ("instance-NCDHW", "instance", (1, 2, 3, 2, 5), {}),
    ("instance-NHWC", "instance", (2, 5, 3, 4), {"channel_axis": -1}),
    ("group-NCL", "group", (2, 6, 7), {"groups": 3}),
    ("group-NCHW", "group", (3, 8, 5, 5), {"groups": 4}),
    ("group-1x1", "group", (2, 6, 1, 1), {"groups": 2}),
    ("group-G1", "group", (1, 12, 3, 3), {"groups": 1}),
    ("group-GC", "group", (2, 12, 3, 3), {"groups": 12}),
    ("group-NC", "group", (4, 6), {"groups": 3}),
    ("group-NHWC", "group", (2, 3, 5, 6), {"groups": 3, "channel_axis": -1}),
    ("group-NLC", "group", (2, 7, 10), {"groups": 5, "channel_axis": -1}),
    ("layer-rows", "layer", (7, 5), {"ns": (5,)}),
    ("layer-2d-block", "layer", (3, 4, 5), {"ns": (4, 5)}),
    ("layer-1023", "layer", (2, 1023), {"ns": (1023,)}),
    ("layer-channels-first", "layer", (2, 5, 3, 3), {"ns": (5,), "channel_axis": 1}),
    ("layer-CHW-first", "layer", (2, 5, 3, 3), {"ns": (5, 3), "channel_axis": 1}),
    ("rms-rows", "rms", (7, 5), {"ns": (5,)}),
    ("rms-2d-block", "rms", (3, 4, 5), {"ns": (4, 5)}),
    ("rms-channels-first", "rms", (2, 5, 3, 3), {"ns": (5,), "channel_axis": 1}),
    ("adain-NCHW", "adain", (2, 3, 5, 5), {}),
    ("adain-NHWC", "adain", (2, 4, 5, 3), {"channel_axis": -1}),
    # the pointwise kinds (no statistics): alpha (and Derf's shift) travel in the style slot
    ("dyt-rows", "dyt", (7, 5), {"ns": (5,)}),
    ("dyt-2d-block", "dyt", (3, 4, 5), {"ns": (4, 5)}),
    ("dyt-1023", "dyt", (2, 1023), {"ns": (1023,)}),
    ("dyt-channels-first", "dyt", (2, 5, 3, 3), {"ns": (5,), "channel_axis": 1}),
    ("dyt-1x1", "dyt", (1, 1), {"ns": (1,)}),
    ("derf-rows", "derf", (7, 5), {"ns": (5,)}),
    ("derf-2d-block-first", "derf", (2, 3, 5, 2), {"ns": (3, 5), "channel_axis": 1}),
    ("derf-channels-first", "derf", (3, 5, 2, 3), {"ns": (5,), "channel_axis": 1}),
]
BLOCK = ("layer", "rms", "dyt", "derf")  # kinds whose parameters are over normalized_shape


def _channels(kind, shape, opts):
    if kind in BLOCK:
        return opts["ns"]
    return (shape[opts.get("channel_axis", 1)],)


def _make(kind, shape, opts, dtype, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    pshape = _channels(kind, shape, opts)
    w = (torch.rand(pshape, generator=g, dtype=torch.float64) + 0.5).to(dtype) if affine else None
    b = torch.randn(pshape, generator=g, dtype=torch.float64).to(dtype) if affine else None
    if kind == "rms":
        b = None
    style = None
    if kind == "adain":
        s_shape = list(shape)
        spatial = [d for d in range(1, len(shape)) if d != opts.get("channel_axis", 1) % len(shape)]
        s_shape[spatial[0]] += 2  # the style's positions may differ from the content's
        style = (torch.randn(s_shape, generator=g, dtype=torch.float64) * 3 - 1).to(dtype)
        w = b = None
    if kind in ("dyt", "derf"):  # (alpha,) or (alpha, shift): inputs reach the curved part
        style = (torch.tensor([0.7, -0.3][:1 if kind == "dyt" else 2], dtype=torch.float64)
                 + 0.2 * torch.rand(1, generator=g, dtype=torch.float64)).to(dtype)
    return x, w, b, style


def _normlab(kind, x, w, b, style, opts, backend, residual=None, activation=None):
    kw = dict(channel_axis=opts.get("channel_axis", 1 if kind not in BLOCK else -1),
              residual=residual, activation=activation, backend=backend)
    if kind == "batch":
        return F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5, **kw)
    if kind == "instance":
        return F.instance_norm(x, None, None, w, b, True, 0.1, 1e-5, **kw)
    if kind == "group":
        return F.group_norm(x, opts["groups"], w, b, 1e-5, **kw)
    if kind == "layer":
        return F.layer_norm(x, opts["ns"], w, b, 1e-5, **kw)
    if kind == "rms":
        return F.rms_norm(x, opts["ns"], w, 1e-6, **kw)
    if kind == "dyt":
        return F.dynamic_tanh(x, opts["ns"], style, w, b, **kw)
    if kind == "derf":
        return F.derf(x, opts["ns"], style[:1], style[1:], w, b, **kw)
    return F.adaptive_instance_norm(x, style, 1e-5, **kw)


def _oracle(kind, x, w, b, style, opts, residual=None, activation=None):
    ax = opts.get("channel_axis", 1 if kind not in BLOCK else -1)
    if kind == "batch":
        y = oracle.batch(x, w, b, channel_axis=ax)
    elif kind == "instance":
        y = oracle.instance(x, w, b, channel_axis=ax)
    elif kind == "group":
        y = oracle.group(x, opts["groups"], w, b, channel_axis=ax)
    elif kind == "layer":
        y = oracle.layer(x, opts["ns"], w, b, channel_axis=ax)
    elif kind == "rms":
        y = oracle.rms(x, opts["ns"], w, eps=1e-6, channel_axis=ax)
    elif kind == "dyt":
        y = oracle.dyt(x, opts["ns"], style[0], w, b, channel_axis=ax)
    elif kind == "derf":
        y = oracle.derf(x, opts["ns"], style[0], style[1], w, b, channel_axis=ax)
    else:
        y = oracle.adain(x, style, channel_axis=ax)
    return oracle.epilogue(y, residual, activation)


def _leaves(*ts):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in ts]


def _torch_nn(kind, x, w, b, style, opts, residual=None, activation=None):
    ax = opts.get("channel_axis", 1 if kind not in BLOCK else -1)
    return oracle.torch_nn(kind, x, w, b, style, channel_axis=ax, groups=opts.get("groups"),
                           normalized_shape=opts.get("ns"), eps=1e-6 if kind == "rms" else 1e-5,
                           residual=residual, activation=activation)


def _forward_backward(fn, leaves, shape, dtype):
    """fn's output and the gradients of every leaf (None kept) for the seeded upstream dy."""
    ts = _leaves(*leaves)
    y = fn(*ts)
    dy = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(DY_SEED))
    y.backward(dy.to(y.dtype))
    return y, [None if t is None else t.grad for t in ts]


def check_against_oracle(kind, shape, opts, dtype, backend, *, residual=False, activation=None,
                         affine=True, check_grads=True, mutate=None):
    """normlab's output and every gradient against the float64 oracle. float32/float64: the
    tolerance table (a parameter gradient sums n rounded terms: its error grows like sqrt(n)).
    float16/bfloat16: at most twice torch.nn's own error on the same inputs
    (``oracle.close_to_torch``). ``mutate(grads)`` alters normlab's gradients before the
    comparison (the mutation tests: a wrong gradient must fail)."""
    x, w, b, style = _make(kind, shape, opts, dtype, affine=affine)
    res = torch.randn(shape, dtype=torch.float64).to(dtype) if residual else None
    inputs = (x, w, b, style, res)
    y, grads = _forward_backward(
        lambda *t: _normlab(kind, *t[:4], opts, backend, t[4], activation), inputs, shape, dtype)
    assert y.dtype == dtype and y.shape == x.shape
    y64, grads64 = _forward_backward(
        lambda *t: _oracle(kind, *t[:4], opts, t[4], activation),
        [None if t is None else t.double() for t in inputs], shape, torch.float64)
    half = dtype in oracle.HALF
    if half:
        yt, grads_t = _forward_backward(
            lambda *t: _torch_nn(kind, *t[:4], opts, t[4], activation), inputs, shape, dtype)
        oracle.close_to_torch(y, y64, yt, dtype, "output")
    else:
        oracle.close(y, y64, dtype)
    if not check_grads:
        return
    if mutate is not None:
        grads = mutate(grads)
    names = ("input", "weight", "bias", "style", "residual")
    for i, (got, want) in enumerate(zip(grads, grads64, strict=True)):
        if got is None:
            continue
        if half:
            oracle.close_to_torch(got, want, grads_t[i], dtype, f"{names[i]} gradient")
        else:
            n = max(1, x.numel() // max(got.numel(), 1))
            oracle.close(got, want, dtype, max(1.0, n ** 0.5 / 4) if i else 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_float64_matches_oracle(case, backend):
    _, kind, shape, opts = case
    check_against_oracle(kind, shape, opts, torch.float64, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("case", CASES[2:3] + CASES[12:13] + CASES[19:20] + CASES[27:28],
                         ids=["batch", "group", "layer", "adain"])
def test_epilogue_matches_oracle(case, activation, backend):
    _, kind, shape, opts = case
    check_against_oracle(kind, shape, opts, torch.float64, backend, residual=True,
                         activation=activation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_low_precision_matches_float64_oracle(case, dtype, backend):
    _, kind, shape, opts = case
    # Groups of 2 or 3 elements make dx a cancellation of O(rstd * |dy|) terms, ill-conditioned
    # in 8-bit mantissas; those shapes are covered in float64 above and here forward only.
    tiny_groups = case[0] in ("group-NC", "group-1x1")
    check_against_oracle(kind, shape, opts, dtype, backend, check_grads=not tiny_groups)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["batch", "instance", "group", "layer"])
def test_without_affine(kind, backend):
    case = {"batch": CASES[2], "instance": CASES[8], "group": CASES[12], "layer": CASES[19]}[kind]
    check_against_oracle(kind, case[2], case[3], torch.float64, backend, affine=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,fn", [
    ("batch", lambda x, be: F.batch_norm(x, None, None, training=True, backend=be)),
    ("group", lambda x, be: F.group_norm(x, 4, backend=be)),
    ("instance", lambda x, be: F.instance_norm(x, backend=be)),
    ("layer1", lambda x, be: F.layer_norm(x, (8,), channel_axis=1, backend=be)),
    ("rms1", lambda x, be: F.rms_norm(x, (8,), channel_axis=1, backend=be)),
])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format],
                         ids=["channels_last", "contiguous"])
def test_memory_format_preserved(kind, fn, fmt, backend):
    """Outputs and input gradients keep the input's memory format (torch's GroupNorm and
    InstanceNorm return contiguous output for channels_last input; normlab does not)."""
    x = torch.randn(2, 8, 5, 3).contiguous(memory_format=fmt).requires_grad_()
    y = fn(x, backend)
    assert y.is_contiguous(memory_format=fmt)
    y.backward(torch.randn_like(y))
    assert x.grad.is_contiguous(memory_format=fmt)
    ref = fn(x.detach().contiguous(), "reference")
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_3d_batch_and_group(backend):
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last_3d)
    y = F.group_norm(x, 3, backend=backend)
    oracle.close(y, oracle.group(x, 3), torch.float64)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    y = F.batch_norm(x, None, None, training=True, backend=backend)
    oracle.close(y, oracle.batch(x), torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_large_values_do_not_overflow(backend):
    """float16 values near 7e4: statistics in float32, no inf/NaN (torch's own CPU batch and
    group norm overflow here; normlab routes around it)."""
    g = torch.Generator().manual_seed(3)
    x = ((torch.rand(16, 4, 3, 3, generator=g) * 2 - 1) * 6.5e4).half()
    for got, want in [
        (F.batch_norm(x, None, None, training=True, backend=backend), oracle.batch(x)),
        (F.group_norm(x, 2, backend=backend), oracle.group(x, 2)),
        (F.instance_norm(x, backend=backend), oracle.instance(x)),
        (F.layer_norm(x, (3, 3), backend=backend), oracle.layer(x, (3, 3))),
        (F.rms_norm(x, (3, 3), eps=1e-6, backend=backend), oracle.rms(x, (3, 3))),
    ]:
        assert torch.isfinite(got).all()
        oracle.close(got, want, torch.float16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    y = F.batch_norm(x, rm, rv, w, None, training=True, backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)
    assert torch.equal(w.grad, torch.zeros(3))
    for fn in (lambda t: F.group_norm(t, 3, backend=backend),
               lambda t: F.layer_norm(t, (4,), backend=backend),
               lambda t: F.instance_norm(t, rm, rv, backend=backend)):
        assert fn(x).shape == x.shape
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_in_its_group(backend):
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    x[1, 2, 3] = float("nan")
    y = F.group_norm(x, 3, backend=backend)  # group of (sample 1, channels 2..3)
    nan = torch.isnan(y)
    assert nan[1, 2:4].all() and nan.sum() == 2 * 5
    y = F.layer_norm(x, (5,), backend=backend)
    assert torch.isnan(y[1, 2]).all() and torch.isnan(y).sum() == 5
    y = F.batch_norm(x, None, None, training=True, backend=backend)
    assert torch.isnan(y[:, 2]).all() and torch.isnan(y).sum() == 4 * 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_statistics_update(backend):
    """Running mean and unbiased running var, with the momentum, against the definition."""
    x = torch.randn(6, 3, 5, dtype=torch.float64) * 3 + 1
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    F.batch_norm(x, rm, rv, training=True, momentum=0.25, backend=backend)
    var, mean = torch.var_mean(x, (0, 2), correction=1)
    torch.testing.assert_close(rm, 0.25 * mean)
    torch.testing.assert_close(rv, 0.75 + 0.25 * var)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    F.instance_norm(x, rm, rv, use_input_stats=True, momentum=0.25, backend=backend)
    var, mean = torch.var_mean(x, (2,), correction=1)  # per sample, then averaged over N
    torch.testing.assert_close(rm, 0.25 * mean.mean(0))
    torch.testing.assert_close(rv, 0.75 + 0.25 * var.mean(0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_uses_running_statistics(backend):
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64, requires_grad=True)
    rm = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    rv = torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64)
    w = torch.tensor([1.5, 2.0, -1.0], dtype=torch.float64)
    for fn in (lambda: F.batch_norm(x, rm, rv, w, None, training=False, backend=backend),
               lambda: F.instance_norm(x, rm, rv, w, None, use_input_stats=False,
                                       backend=backend)):
        y = fn()
        want = (x - rm.view(1, 3, 1, 1)) / torch.sqrt(rv.view(1, 3, 1, 1) + 1e-5) \
            * w.view(1, 3, 1, 1)
        torch.testing.assert_close(y, want)
        (g,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(g, (w / torch.sqrt(rv + 1e-5)).view(1, 3, 1, 1).expand_as(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [
    lambda: torch.randn(4, 6, 5, dtype=torch.float64).transpose(1, 2).contiguous()
    .transpose(1, 2),  # channel innermost in a 3D tensor
    lambda: torch.randn(4, 6, 10, dtype=torch.float64)[:, :, ::2],  # strided positions
    lambda: torch.randn(6, 4, 5, 3, dtype=torch.float64).transpose(0, 1),  # batch not outermost
    lambda: torch.randn(4, 3, 6, 5, dtype=torch.float64).permute(0, 2, 3, 1),  # NHWC view
], ids=["channel-innermost-3d", "strided", "batch-transposed", "permuted-4d"])
def test_non_contiguous_inputs(make, backend):
    """Any strides work, for every kind (the lab's ghost batches hit a channel-innermost 3D
    tensor that torch's group-norm kernel rejects)."""
    x = make().requires_grad_()
    dy = torch.randn(x.shape, dtype=torch.float64)
    for fn, ref in [
        (lambda t: F.instance_norm(t, backend=backend), oracle.instance),
        (lambda t: F.group_norm(t, 2, backend=backend), lambda t: oracle.group(t, 2)),
        (lambda t: F.batch_norm(t, None, None, training=True, backend=backend), oracle.batch),
        (lambda t: F.layer_norm(t, t.shape[-1:], backend=backend),
         lambda t: oracle.layer(t, t.shape[-1:])),
    ]:
        x.grad = None
        y = fn(x)
        oracle.close(y, ref(x.detach()), torch.float64)
        y.backward(dy)
        xo = x.detach().clone().requires_grad_()
        ref(xo).backward(dy)
        oracle.close(x.grad, xo.grad, torch.float64)


MUTATIONS = {
    "zeroed": lambda g: torch.zeros_like(g),
    "negated": lambda g: -g,
    "tripled": lambda g: 3 * g,
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("param", [1, 2, 3], ids=["weight", "bias", "alpha"])
@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("batch-N1-long", "group-NCHW",
                                                               "layer-1023", "dyt-1023",
                                                               "derf-rows")],
                         ids=lambda c: c[0])
def test_a_wrong_parameter_gradient_fails_the_comparison(case, mutation, param, dtype):
    """The comparison can fail: a zeroed, negated or tripled weight/bias gradient is caught in
    every dtype, on the long batch-norm case too (whose bfloat16 tolerance once let all pass);
    for DyT/Derf the alpha (and shift) gradient too (the style slot, param 3)."""
    _, kind, shape, opts = case
    if param == 3 and kind not in ("dyt", "derf"):
        pytest.skip("only the pointwise kinds have alpha (in the style slot)")

    def mutate(grads):
        grads = list(grads)
        grads[param] = MUTATIONS[mutation](grads[param])
        return grads

    check_against_oracle(kind, shape, opts, dtype, "native")  # unmutated: passes
    with pytest.raises(AssertionError):
        check_against_oracle(kind, shape, opts, dtype, "native", mutate=mutate)
