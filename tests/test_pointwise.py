"""DyT and Derf (the pointwise kinds): gradients in float64 (gradcheck, gradgradcheck) for x, w,
b, alpha and s; the Triton elementwise kernels (interpreter, poisoned outputs, awkward shapes
and layouts, forced loops and splits); per-dtype accuracy; torch.compile; the modules' state,
drop-in behaviour; the registry and swap_norms on real timm models.

The oracle is the papers' formula written here in float64 (``tests/oracle.py``: dyt, derf) and,
for the modules, the DyT authors' module as their paper states it (``oracle.AuthorsDyT``: not
normlab code)."""

from __future__ import annotations

import copy
import os
import pickle
import warnings

import pytest
import torch

import normlab.functional as F
import normlab.nn as nl
from normlab import ops
from normlab.registry import create_norm_layer
from normlab.surgery import swap_norms
from tests import oracle

D = torch.float64
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
needs_triton = pytest.mark.skipif(not ops.triton_available(), reason="Triton is not installed")


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _call(kind, x, alpha, shift, w, b, ns, axis, backend, residual=None, activation=None):
    kw = dict(channel_axis=axis, residual=residual, activation=activation, backend=backend)
    if kind == "dyt":
        return F.dynamic_tanh(x, ns, alpha, w, b, **kw)
    return F.derf(x, ns, alpha, shift, w, b, **kw)


def _oracle(kind, x, alpha, shift, w, b, ns, axis, residual=None, activation=None):
    y = (oracle.dyt(x, ns, alpha, w, b, axis) if kind == "dyt"
         else oracle.derf(x, ns, alpha, shift, w, b, axis))
    return oracle.epilogue(y, residual, activation)


def _inputs(shape, ns, device="cpu", dtype=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=D) * 2 + 0.3
    w = torch.rand(ns, generator=g, dtype=D) + 0.5
    b = torch.randn(ns, generator=g, dtype=D)
    alpha = torch.tensor([0.6], dtype=D) + 0.3 * torch.rand(1, generator=g, dtype=D)
    shift = torch.tensor([-0.2], dtype=D)
    return [t.to(device, dtype) for t in (x, alpha, shift, w, b)]


# ---------------------------------------------------------------------------------------------
# gradients in float64


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("epilogue", [None, "silu"], ids=["plain", "residual+silu"])
@pytest.mark.parametrize("kind,shape,ns,axis", [
    ("dyt", (3, 5), (5,), -1), ("dyt", (2, 3, 2, 2), (3,), 1), ("derf", (3, 5), (5,), -1),
    ("derf", (2, 3, 4), (3, 4), -1)], ids=["dyt-rows", "dyt-NCHW", "derf-rows", "derf-block"])
def test_gradcheck_and_gradgradcheck(kind, shape, ns, axis, epilogue, backend):
    x, alpha, shift, w, b = (t.requires_grad_() for t in _inputs(shape, ns))
    r = torch.randn(shape, dtype=D, requires_grad=True) if epilogue else None
    args = [x, alpha, w, b] + ([shift] if kind == "derf" else []) + ([r] if r is not None else [])

    def f(x, alpha, w, b, *rest):
        rest = list(rest)
        s = rest.pop(0) if kind == "derf" else None
        res = rest.pop(0) if rest else None
        return _call(kind, x, alpha, s, w, b, ns, axis, backend, res, epilogue)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@needs_triton
@pytest.mark.parametrize("kind", ["dyt", "derf"])
def test_gradcheck_triton(kind):
    """The kernels' backward (no double backward on this backend, as for the other kinds)."""
    x, alpha, shift, w, b = (t.to(DEVICE).requires_grad_() for t in _inputs((2, 3, 4), (3,)))
    r = torch.randn(2, 3, 4, dtype=D, device=DEVICE, requires_grad=True)
    s = shift if kind == "derf" else None

    def f(x, alpha, w, b, r, *s_):
        return _call(kind, x, alpha, s_[0] if s_ else None, w, b, (3,), 1, "triton", r, "gelu")

    assert torch.autograd.gradcheck(f, [x, alpha, w, b, r] + ([s] if s is not None else []))


# ---------------------------------------------------------------------------------------------
# the Triton kernels (interpreter on CPU): poisoned outputs, awkward shapes, every layout


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the pointwise kernels allocate starts as NaN (partial sums included)."""
    from normlab.kernels.triton import pointwise

    monkeypatch.setattr(pointwise, "_empty_like", lambda t: torch.full_like(t, float("nan")))
    monkeypatch.setattr(pointwise, "_empty", lambda *shape, **kw: torch.full(
        shape, float("nan"), **kw))
    return pointwise


# (kind, shape, normalized_shape, channel_axis, memory): sizes 1, primes, 1023, block layouts
KERNEL_CASES = [
    ("dyt", (1, 1), (1,), -1, None),
    ("dyt", (7, 13), (13,), -1, None),
    ("dyt", (3, 1023), (1023,), -1, None),
    ("dyt", (2, 3, 4), (3, 4), -1, None),
    ("dyt", (2, 5, 3, 7), (5,), 1, None),
    ("dyt", (2, 5, 3, 7), (5,), 1, "channels_last"),
    ("dyt", (1, 3, 1, 1), (3,), 1, None),
    ("derf", (5, 11), (11,), -1, None),
    ("derf", (2, 3, 5, 2), (3, 5), 1, None),
    ("derf", (3, 7, 2, 2), (7,), 1, "channels_last"),
]


def _kernel_inputs(kind, shape, ns, memory, dtype, seed):
    x, alpha, shift, w, b = _inputs(shape, ns, DEVICE, dtype, seed)
    if memory == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, alpha, shift if kind == "derf" else None, w, b


def _grads(kind, x, alpha, shift, w, b, ns, axis, backend, dy, r=None, act=None):
    leaves = [_leaf(t) if t is not None else None for t in (x, alpha, shift, w, b, r)]
    y = _call(kind, leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], ns, axis, backend,
              leaves[5], act)
    live = [t for t in leaves if t is not None]
    return (y, *torch.autograd.grad(y, live, dy))


@needs_triton
@pytest.mark.parametrize("tiles", ["default", "small"])
@pytest.mark.parametrize("dtype", [D, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", KERNEL_CASES,
                         ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}-axis{c[3]}-"
                                       f"{c[4] or 'dense'}")
def test_kernels_match_the_oracle(case, dtype, tiles, poisoned, monkeypatch):
    if tiles == "small":  # 8-element tiles, 4 programs: the looped and split paths
        monkeypatch.setattr(poisoned, "_BLOCK", 8)
        monkeypatch.setattr(poisoned, "_TILE", 8)
        monkeypatch.setattr(poisoned, "_TARGET_PROGRAMS", 4)
    kind, shape, ns, axis, memory = case
    x, alpha, shift, w, b = _kernel_inputs(kind, shape, ns, memory, dtype, 1)
    dy = torch.randn(shape, dtype=D).to(DEVICE, dtype)
    got = _grads(kind, x, alpha, shift, w, b, ns, axis, "triton", dy)
    with ops.trace_backends() as ran:
        _call(kind, x, alpha, shift, w, b, ns, axis, "triton")
    assert ran == ["triton"]
    assert got[0].dtype == dtype and got[0].stride() == x.stride()
    assert got[1].stride() == x.stride()  # dx in x's layout too
    # oracle: the formula in float64 on the same (rounded) inputs, autograd for the gradients
    d = [None if t is None else _leaf(t.double()) for t in (x, alpha, shift, w, b)]
    y64 = _oracle(kind, d[0], d[1], d[2], d[3], d[4], ns, axis)
    want = (y64, *torch.autograd.grad(y64, [t for t in d if t is not None], dy.double()))
    for a, e in zip(got, want, strict=True):
        assert not a.isnan().any()  # every element written, every partial sum too
        n = max(1, x.numel() // max(a.numel(), 1))  # a parameter gradient sums n terms
        if dtype == torch.bfloat16:
            _within_ulps(a, e, 1 if a.shape == x.shape and a is got[0] else None, n)
        else:
            oracle.close(a, e, dtype, max(1.0, n ** 0.5 / 4))


def _within_ulps(got, want, ulps, n):
    """bfloat16: the output within ``ulps`` units in the last place of the float64 value (the
    kernels compute in float32 and round once); a gradient (``ulps=None``) within the table."""
    if ulps is None:
        oracle.close(got, want, torch.bfloat16, max(1.0, n ** 0.5 / 4))
        return
    w = want.double()
    ulp = torch.pow(2.0, torch.floor(torch.log2(w.abs().clamp_min(2.0 ** -126))) - 7)
    err = (got.double() - w).abs()
    assert (err <= ulps * ulp).all(), f"max error {(err / ulp).max().item():.2f} ulps"


@needs_triton
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("case", [KERNEL_CASES[1], KERNEL_CASES[5], KERNEL_CASES[8]],
                         ids=["dyt-rows", "dyt-channels-last", "derf-block-first"])
def test_fused_epilogue_forward_and_backward(case, activation, poisoned, monkeypatch):
    monkeypatch.setattr(poisoned, "_TILE", 16)
    kind, shape, ns, axis, memory = case
    x, alpha, shift, w, b = _kernel_inputs(kind, shape, ns, memory, D, 2)
    r = torch.randn(shape, dtype=D, device=DEVICE)
    dy = torch.randn(shape, dtype=D, device=DEVICE)
    got = _grads(kind, x, alpha, shift, w, b, ns, axis, "triton", dy, r, activation)
    d = [None if t is None else _leaf(t) for t in (x, alpha, shift, w, b, r)]
    y64 = _oracle(kind, d[0], d[1], d[2], d[3], d[4], ns, axis, d[5], activation)
    want = (y64, *torch.autograd.grad(y64, [t for t in d if t is not None], dy))
    for a, e in zip(got, want, strict=True):
        assert not a.isnan().any()
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@needs_triton
def test_kernel_paths_taken_by_the_cases():
    """The backward plan's looped (several tasks per program) and split paths are both driven
    by the cases above with small tiles, and one tile per program with the defaults."""
    from normlab.kernels.triton import pointwise as pw
    from normlab.ops.triton_op import layout

    seen = set()
    for tile, target in ((4096, 512), (8, 4)):
        old = pw._TILE, pw._TARGET_PROGRAMS
        pw._TILE, pw._TARGET_PROGRAMS = tile, target
        try:
            for kind, shape, ns, axis, memory in KERNEL_CASES:
                x = torch.empty(shape)
                if memory == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                outer, period, inner, _ = layout(kind, x, axis, normalized_ndim=len(ns)).dims
                bj, bi, nit, splits = pw._bwd_plan(outer, period, inner)
                tasks = outer * nit
                seen.add("split" if splits > 1 else "one")
                seen.add("loop" if tasks > splits else "once")
                seen.add("j-blocks" if period > bj else "one-j-block")
        finally:
            pw._TILE, pw._TARGET_PROGRAMS = old
    assert seen == {"split", "one", "loop", "once", "j-blocks", "one-j-block"}


@needs_triton
def test_empty_input_and_unread_layouts_hand_on():
    x = torch.randn(0, 5, dtype=D, device=DEVICE, requires_grad=True)
    a = torch.tensor([0.5], dtype=D, device=DEVICE, requires_grad=True)
    with ops.trace_backends() as ran:
        y = F.dynamic_tanh(x, (5,), a, backend="triton")
        odd = torch.randn(4, 6, 5, dtype=D, device=DEVICE)[:, :, ::2]  # strided, not dense
        y2 = F.dynamic_tanh(odd, (3,), a, backend="triton")
    assert ran == ["native", "native"]
    assert y.shape == (0, 5)
    torch.testing.assert_close(y2, torch.tanh(0.5 * odd))
    y.sum().backward()
    assert a.grad.item() == 0.0


def test_element_view_of_the_plan():
    """spec.plan's ELEMENT view: the weight index of each memory offset, for every layout the
    kernels read, equals the logical index of the element's block position."""
    from normlab import spec

    for shape, k, axis, fmt in [((2, 3, 4), 2, -1, None), ((2, 5, 3, 7), 1, 1, None),
                                ((2, 5, 3, 7), 1, 1, torch.channels_last), ((4, 6), 1, -1, None),
                                ((2, 3, 5, 2), 2, 1, None)]:
        x = torch.arange(torch.Size(shape).numel()).reshape(shape).double()
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        kern = spec.plan("dyt", shape, channel_axis=axis, normalized_ndim=k,
                         strides=x.stride()).kernel
        assert kern.family == spec.ELEMENT
        _, period, inner, _ = kern.dims
        block = list(range(len(shape) - k, len(shape))) if axis == -1 else list(range(1, 1 + k))
        idx = torch.zeros(shape, dtype=torch.long)  # logical flattened block index per element
        for d in block:
            n = shape[d]
            view = [1] * len(shape)
            view[d] = n
            idx = idx * n + torch.arange(n).reshape(view)
        offsets = torch.as_strided(torch.arange(x.numel()), shape, x.stride())
        assert torch.equal((offsets // inner) % period, idx)
    # layouts it does not read: the block dims not adjacent in memory
    t = torch.empty(2, 3, 4).transpose(1, 2)  # (2, 4, 3) whose last dim is strided
    assert spec.plan("dyt", (2, 4, 3), channel_axis=-1, normalized_ndim=2,
                     strides=t.stride()).kernel is None


# ---------------------------------------------------------------------------------------------
# per-dtype accuracy (reference and native too), half precision within 1 ulp


@pytest.mark.parametrize("backend", ["native", "reference", "numba"])
@pytest.mark.parametrize("kind", ["dyt", "derf"])
def test_bfloat16_output_within_one_ulp_and_float32_strict(kind, backend):
    ns, shape = (64,), (32, 64)
    for dtype in (torch.float32, torch.bfloat16):
        x, alpha, shift, w, b = _inputs(shape, ns, dtype=dtype, seed=3)
        s = shift if kind == "derf" else None
        y = _call(kind, x, alpha, s, w, b, ns, -1, backend)
        want = _oracle(kind, x.double(), alpha.double(), None if s is None else s.double(),
                       w.double(), b.double(), ns, -1)
        if dtype == torch.float32:
            torch.testing.assert_close(y.double(), want, rtol=4e-7, atol=4e-7)  # a few ulps
        else:
            _within_ulps(y, want, 1, 1)


# ---------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.slow
@pytest.mark.parametrize("backend", [None, "reference", "triton"])
@pytest.mark.parametrize("cls", [nl.DynamicTanh, nl.Derf])
def test_compile_fullgraph_matches_eager(cls, backend):
    if backend == "triton" and not ops.triton_available():
        pytest.skip("Triton is not installed")
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = cls(6, channel_axis=1, activation="gelu", backend=backend).to(DEVICE)
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(torch.rand_like(p) * 0.5)
    comp = copy.deepcopy(eager)
    step = torch.compile(comp, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 6, 3, 5, device=DEVICE)
    r = torch.randn(2, 6, 3, 5, device=DEVICE)
    outs = []
    for m, fn in ((eager, eager), (comp, step)):
        xs = x.clone().requires_grad_()
        y = fn(xs, residual=r)
        outs.append((y, *torch.autograd.grad(y.square().sum(), [xs, *m.parameters()])))
    for a, e in zip(outs[1], outs[0], strict=True):
        torch.testing.assert_close(a, e, **oracle.tol(torch.float32))


# ---------------------------------------------------------------------------------------------
# modules: state, the DyT authors' layout, drop-in behaviour


_AuthorsDyT = oracle.AuthorsDyT


@pytest.mark.parametrize("channels_last", [True, False])
def test_state_dict_loads_both_ways_with_the_authors_module(channels_last):
    torch.manual_seed(0)
    theirs = _AuthorsDyT(6, channels_last).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.rand_like(p) + 0.3)
    ours = nl.DynamicTanh(6, channel_axis=-1 if channels_last else 1).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn((2, 4, 5, 6) if channels_last else (2, 6, 4, 5), dtype=D)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yt = ours(xo), theirs(xt)
    torch.testing.assert_close(yo, yt, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(yo)
    yo.backward(dy)
    yt.backward(dy)
    torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-12, atol=1e-12)
    for n, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, dict(theirs.named_parameters())[n].grad,
                                   rtol=1e-10, atol=1e-10, msg=n)
    back = _AuthorsDyT(6, channels_last).double()
    back.load_state_dict(ours.state_dict(), strict=True)


def test_defaults_slots_and_repr():
    m = nl.DynamicTanh(4)
    assert m.alpha.shape == (1,) and m.alpha.item() == 0.5
    assert torch.equal(m.weight, torch.ones(4)) and torch.equal(m.bias, torch.zeros(4))
    assert repr(m) == "DynamicTanh((4,), alpha_init=0.5)"
    d = nl.Derf((2, 3), alpha_init=0.8, shift_init=0.1, bias=False, channel_axis=1)
    assert d.shift.item() == pytest.approx(0.1) and d.bias is None
    assert set(d.state_dict()) == {"alpha", "shift", "weight"}
    assert repr(d) == "Derf((2, 3), alpha_init=0.8, shift_init=0.1, bias=False, channel_axis=1)"
    n = nl.DynamicTanh(3, elementwise_affine=False)
    assert n.weight is None and n.bias is None and list(n.state_dict()) == ["alpha"]
    x = torch.randn(2, 3, dtype=torch.float32)
    torch.testing.assert_close(n(x), torch.tanh(0.5 * x))


@pytest.mark.parametrize("cls", [nl.DynamicTanh, nl.Derf])
def test_deepcopy_pickle_and_script(cls):
    m = cls(5, activation="relu")
    with torch.no_grad():
        m.alpha.fill_(0.9)
    x = torch.randn(3, 5)
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert torch.equal(other(x), m(x))
        assert other.state_dict().keys() == m.state_dict().keys()
    with pytest.raises(TypeError, match=f"{cls.__name__}: normlab modules cannot be compiled "
                                        "by torch.jit.script"):
        torch.jit.script(torch.nn.Sequential(torch.nn.Linear(5, 5), m))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(m, (x,))  # the documented alternative works
    torch.testing.assert_close(traced(x), m(x))


@pytest.mark.parametrize("shape", [(1, 3), (0, 3), (1, 1, 3), (4, 3)])
def test_degenerate_shapes_match_the_authors_module(shape):
    """A batch of one, an empty batch: computed (a pointwise map has nothing to refuse),
    gradients included, the same as the authors' module."""
    torch.manual_seed(1)
    theirs = _AuthorsDyT(3, True).double()
    ours = nl.DynamicTanh(3).double()
    with torch.no_grad():
        theirs.alpha.fill_(1.3)
        theirs.weight.uniform_(0.5, 1.5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(shape, dtype=D)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yt = ours(xo), theirs(xt)
    torch.testing.assert_close(yo, yt, rtol=1e-12, atol=1e-12)
    yo.sum().backward()
    yt.sum().backward()
    torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.alpha.grad, theirs.alpha.grad, rtol=1e-12, atol=1e-12)


def test_half_input_with_float32_parameters():
    m = nl.DynamicTanh(8)  # float32 parameters beside a bfloat16 input (mixed precision)
    x = torch.randn(4, 8).to(torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16
    _within_ulps(y, torch.tanh(0.5 * x.double()), 1, 1)
    y.float().sum().backward()
    assert m.alpha.grad.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# registry and swap_norms


def test_registry_builds_channels_first_layers():
    for name, cls in (("dyt", nl.DynamicTanh), ("derf", nl.Derf)):
        m = create_norm_layer(name, 6)
        assert type(m) is cls and m.channel_axis == 1 and m.normalized_shape == (6,)
        x = torch.randn(2, 6, 3, 3)
        want = torch.tanh(0.5 * x) if name == "dyt" else torch.erf(0.5 * x)
        torch.testing.assert_close(m(x), want)


def test_swap_norms_carries_weight_and_bias_and_axis():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6),
                                nl.LayerNorm(6, channel_axis=-1), torch.nn.Linear(6, 2))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-1, 1)
    new, report = swap_norms(model, "dyt", return_report=True)
    assert [p for p, _, _ in report.changed] == ["1", "2"] and not report.left
    assert isinstance(new[1], nl.DynamicTanh) and new[1].channel_axis == -1
    assert torch.equal(new[1].weight, model[1].weight)
    assert torch.equal(new[1].bias, model[1].bias)
    x = torch.randn(3, 4)
    h = model[0](x)
    want = model[1].weight * torch.tanh(0.5 * h) + model[1].bias
    torch.testing.assert_close(new[1](h), want)
    # and back: a DyT is a norm surgery knows (swap_norms replaces it, to_normlab keeps it)
    back, rep2 = swap_norms(new, "layer", return_report=True)
    assert isinstance(back[1], nl.LayerNorm) and len(rep2.changed) == 2
    assert torch.equal(back[1].weight, model[1].weight)


def _timm():
    try:
        from tests.zoo import load_zoo

        return load_zoo()[0]
    except ImportError:
        pytest.skip("the zoo extra (timm) is not installed")


@pytest.mark.slow
@pytest.mark.parametrize("name,kw,ln2d", [
    ("vit_tiny_patch16_224", dict(img_size=32), False),
    ("deit_tiny_patch16_224", dict(img_size=32), False),
    ("convnext_atto", {}, True),
])
def test_swap_norms_on_timm_models(name, kw, ln2d):
    """Every layer norm of a real timm model becomes a DyT (channels-first LayerNorm2d a
    channels-first DyT, as the DyT authors' convert_ln_to_dyt does), the report names each one,
    the weights are carried, and the model trains (forward and backward)."""
    timm = _timm()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kw)
    lns = {p: m for p, m in model.named_modules()
           if type(m).__name__ in ("LayerNorm", "LayerNorm2d")}
    assert lns
    with torch.no_grad():
        for m in lns.values():
            m.weight.uniform_(0.5, 1.5)
    new, report = swap_norms(model, "dyt", return_report=True)
    assert sorted(p for p, _, _ in report.changed) == sorted(lns) and not report.left
    modules = dict(new.named_modules())
    for p, old in lns.items():
        dyt = modules[p]
        assert type(dyt) is nl.DynamicTanh
        assert dyt.channel_axis == (1 if type(old).__name__ == "LayerNorm2d" else -1)
        assert torch.equal(dyt.weight, old.weight)
    assert any(type(m).__name__ == "LayerNorm2d" for m in lns.values()) == ln2d
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in new.modules())
    x = torch.randn(2, 3, 32, 32)
    y = new(x)
    y.square().mean().backward()
    alphas = [m.alpha.grad for m in new.modules() if isinstance(m, nl.DynamicTanh)]
    assert all(g is not None and torch.isfinite(g).all() for g in alphas)
    assert any(g.abs().item() > 0 for g in alphas)


@pytest.mark.slow
def test_swap_norms_on_hugging_face_layer_norms():
    """The Hugging Face layer norms of the adapter table (Cohere's: weight only; OLMo's: no
    affine) become DyT over the last axis, Cohere's weight carried, a bias of zeros."""
    try:
        from tests.zoo import load_zoo

        load_zoo()
        from transformers.models.cohere.modeling_cohere import CohereLayerNorm
        from transformers.models.olmo.modeling_olmo import OlmoLayerNorm
    except ImportError:
        pytest.skip("the zoo extra (transformers) is not installed")
    torch.manual_seed(0)
    cohere = CohereLayerNorm(8)
    with torch.no_grad():
        cohere.weight.uniform_(0.5, 1.5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), cohere, OlmoLayerNorm(8),
                                torch.nn.Linear(8, 2))
    new, report = swap_norms(model, "dyt", return_report=True)
    assert [(p, c) for p, c, _ in report.changed] == [("1", "CohereLayerNorm"),
                                                      ("2", "OlmoLayerNorm")]
    assert all(isinstance(new[i], nl.DynamicTanh) and new[i].channel_axis == -1
               for i in (1, 2))
    assert torch.equal(new[1].weight, cohere.weight)
    assert torch.equal(new[1].bias, torch.zeros(8))
    y = new(torch.randn(3, 4))
    y.sum().backward()
    assert new[2].alpha.grad is not None
