"""The Triton kernels (backend="triton") against the float64 reference and torch.nn: every kind,
both memory layouts and channel_axis=-1, awkward sizes, outputs and every gradient, with the
buffers the kernels write poisoned with NaN first so that an unwritten element shows.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
shapes are small. With a GPU, ``TRITON_INTERPRET=0 pytest tests/test_triton.py`` runs the same
tests on the device.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as TF

import normlab.functional as F
import normlab.nn as nl
from normlab import ops
from tests import oracle

pytestmark = pytest.mark.skipif(not ops.triton_available(), reason="Triton is not installed")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
D = torch.float64


def _set_tile(monkeypatch, tile):
    """16-element tiles drive the looped path and, where groups are few and long, the split
    path on small shapes (the default 4096 puts most groups here in one tile: load once)."""
    from normlab.kernels.triton import norm

    monkeypatch.setattr(norm, "_TILE", tile)


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer the kernels allocate starts as NaN."""
    from normlab.kernels.triton import norm

    monkeypatch.setattr(norm, "_empty_like", lambda t: torch.full_like(t, float("nan")))
    monkeypatch.setattr(norm, "_empty", lambda *shape, **kw: torch.full(shape, float("nan"),
                                                                         **kw))


# kind, shape, channel_axis, memory format, options. Sizes: 1, primes, 1023, non-power-of-2
# channel counts, groups longer than one 4096-element tile (the looped path).
CASES = [
    ("batch", (3, 5, 7), 1, None, {}),
    ("batch", (2, 3, 4, 5), 1, "channels_last", {}),
    ("batch", (7, 6), 1, None, {}),
    ("batch", (2, 5, 3, 13), -1, None, {}),
    ("batch", (2, 3, 4100), 1, None, {}),
    ("batch", (9, 3, 5), 1, None, {}),
    ("instance", (2, 3, 1023), 1, None, {}),
    ("instance", (2, 6, 4, 5), 1, "channels_last", {}),
    ("instance", (3, 11, 5), -1, None, {}),
    ("instance", (1, 2, 1, 1, 3), 1, None, {}),
    ("group", (2, 6, 7), 1, None, {"num_groups": 3}),
    ("group", (2, 12, 3, 5), 1, "channels_last", {"num_groups": 4}),
    ("group", (2, 5, 6), -1, None, {"num_groups": 2}),
    ("group", (1, 4, 1100), 1, None, {"num_groups": 1}),
    ("layer", (5, 7), -1, None, {"normalized_shape": (7,)}),
    ("layer", (3, 1023), -1, None, {"normalized_shape": (1023,)}),
    ("layer", (2, 5003), -1, None, {"normalized_shape": (5003,)}),
    ("layer", (2, 3, 4), -1, None, {"normalized_shape": (3, 4)}),
    ("layer", (3, 1), -1, None, {"normalized_shape": (1,)}),
    ("rms", (4, 13), -1, None, {"normalized_shape": (13,)}),
    ("rms", (2, 3, 4), 1, None, {"normalized_shape": (3, 4)}),
]


def _params(kind, shape, channel_axis, opts, g):
    if kind in ("layer", "rms"):
        pshape = opts["normalized_shape"]
    else:
        pshape = (shape[channel_axis],)
    w = torch.randn(pshape, generator=g, dtype=D)
    b = None if kind == "rms" else torch.randn(pshape, generator=g, dtype=D)
    return w, b


def _call(kind, x, w, b, channel_axis, opts, backend, residual=None, activation=None):
    kw = dict(residual=residual, activation=activation, backend=backend)
    if kind == "batch":
        return F.batch_norm(x, None, None, w, b, training=True, channel_axis=channel_axis, **kw)
    if kind == "instance":
        return F.instance_norm(x, weight=w, bias=b, channel_axis=channel_axis, **kw)
    if kind == "group":
        return F.group_norm(x, opts["num_groups"], w, b, channel_axis=channel_axis, **kw)
    if kind == "layer":
        return F.layer_norm(x, opts["normalized_shape"], w, b, channel_axis=channel_axis, **kw)
    return F.rms_norm(x, opts["normalized_shape"], w, 1e-5, channel_axis=channel_axis, **kw)


def _torch_nn(kind, x, w, b, channel_axis, opts):
    """torch.nn.functional's result (channels first; channel_axis=-1 inputs are moved)."""
    if channel_axis == -1 and kind not in ("layer", "rms"):
        xf = x.movedim(-1, 1)
        return _torch_nn(kind, xf, w, b, 1, opts).movedim(1, -1)
    if kind == "batch":
        return TF.batch_norm(x, None, None, w, b, training=True)
    if kind == "instance":
        return TF.instance_norm(x, weight=w, bias=b)
    if kind == "group":
        return TF.group_norm(x, opts["num_groups"], w, b)
    if kind == "layer":
        return TF.layer_norm(x, opts["normalized_shape"], w, b)
    if channel_axis == 1:
        return TF.rms_norm(x, opts["normalized_shape"], w, 1e-5)
    return TF.rms_norm(x, opts["normalized_shape"], w, 1e-5)


def _run(kind, x, w, b, channel_axis, opts, backend, dy, residual=None, activation=None):
    x = x.detach().clone().requires_grad_()
    params = [t.detach().clone().requires_grad_() if t is not None else None for t in (w, b)]
    r = residual.detach().clone().requires_grad_() if residual is not None else None
    y = _call(kind, x, *params, channel_axis, opts, backend, r, activation)
    leaves = [t for t in (x, *params, r) if t is not None]
    return (y, *torch.autograd.grad(y, leaves, dy))


TOL = {d: oracle.tol(d) for d in oracle.TOL}  # the suite's one table (tests/oracle.py)


def _make(shape, channel_axis, memory, dtype, g):
    x = (torch.randn(shape, generator=g, dtype=D) * 2 + 0.5)
    x = x.to(dtype)
    if memory == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return x.to(DEVICE)


def _numel(case):
    n = 1
    for s in case[1]:
        n *= s
    return n


# every case with the default tiles; the small ones (the interpreter runs each program in
# Python) also with 16-element tiles
TILED = [(c, 4096) for c in CASES] + [(c, 16) for c in CASES if _numel(c) <= 1500]


@pytest.mark.parametrize("case,tile", TILED, ids=lambda v: v if isinstance(v, int) else
                         f"{v[0]}-{'x'.join(map(str, v[1]))}-axis{v[2]}-{v[3] or 'dense'}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=str)
def test_kernels_match_reference_and_torch(case, tile, dtype, monkeypatch):
    _set_tile(monkeypatch, tile)
    kind, shape, channel_axis, memory, opts = case
    g = torch.Generator().manual_seed(hash((kind, shape)) % 2 ** 31)
    x = _make(shape, channel_axis, memory, dtype, g)
    w, b = (t.to(DEVICE, dtype) if t is not None else None
            for t in _params(kind, shape, channel_axis, opts, g))
    dy = torch.randn(x.shape, generator=g, dtype=D).to(DEVICE, dtype)
    got = _run(kind, x, w, b, channel_axis, opts, "triton", dy)
    # the oracle: the reference math in float64 on the same (rounded) inputs
    want = _run(kind, x.double(), None if w is None else w.double(),
                None if b is None else b.double(), channel_axis, opts, "reference", dy.double())
    assert got[0].dtype == dtype and got[0].stride() == x.stride()
    for a, e in zip(got, want, strict=True):
        assert not a.isnan().any()  # every element written
        torch.testing.assert_close(a.double(), e, **TOL[dtype])
    # and torch.nn (float64)
    ref = _torch_nn(kind, x.double(), None if w is None else w.double(),
                    None if b is None else b.double(), channel_axis, opts)
    torch.testing.assert_close(got[0].double(), ref, **TOL[dtype])


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[6], CASES[8], CASES[11],
                                  CASES[17], CASES[19]], ids=lambda c: f"{c[0]}-axis{c[2]}")
def test_fused_epilogue_forward_and_backward(case, activation, monkeypatch):
    _set_tile(monkeypatch, 16 if activation == "gelu" else 4096)  # gelu: looped/split paths
    kind, shape, channel_axis, memory, opts = case
    g = torch.Generator().manual_seed(7)
    x = _make(shape, channel_axis, memory, torch.float64, g)
    w, b = (t.to(DEVICE) if t is not None else None
            for t in _params(kind, shape, channel_axis, opts, g))
    r = torch.randn(shape, generator=g, dtype=D).to(DEVICE)
    dy = torch.randn(x.shape, generator=g, dtype=D).to(DEVICE)
    got = _run(kind, x, w, b, channel_axis, opts, "triton", dy, r, activation)
    want = _run(kind, x, w, b, channel_axis, opts, "reference", dy, r, activation)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_paths_taken_by_the_cases():
    """The tiles and splits the cases above exercise (so a change of policy cannot silently
    leave a path untested)."""
    from normlab.kernels.triton import norm
    from normlab.ops.triton_op import _FAMILY, layout

    seen = set()
    for tile_size in (4096, 16):
        norm._TILE = tile_size
        try:
            for kind, shape, axis, memory, opts in CASES:
                x = torch.empty(shape)
                if memory == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                nd = len(opts.get("normalized_shape", ()))
                k = layout(kind, x, axis, num_groups=opts.get("num_groups"),
                           normalized_ndim=nd or None)
                family, (nb, d0, d1, d2) = _FAMILY[k.family], k.dims
                _, _, single, splits, _ = norm._plan(family, d0, d1, d2, nb)
                seen.add((family, "single" if single else "split" if splits > 1 else "loop"))
        finally:
            norm._TILE = 4096
    assert seen == {(0, "single"), (0, "loop"), (0, "split"), (1, "loop"), (1, "split")}


MASKED = [
    ("batch", (3, 4, 7), 1, None), ("batch", (3, 4, 2, 3), 1, "channels_last"),
    ("batch", (3, 7, 5), -1, None), ("instance", (3, 4, 7), 1, None),
    ("instance", (3, 5, 2, 3), 1, "channels_last"), ("group", (3, 6, 7), 1, None),
    ("group", (3, 2, 3, 6), -1, None),
]


@pytest.mark.parametrize("tile", [4096, 16])
@pytest.mark.parametrize("case", MASKED, ids=lambda c: f"{c[0]}-axis{c[2]}-{c[3] or 'dense'}")
def test_masks_fused(case, tile, monkeypatch):
    """The padding mask in the kernels = the reference masked math: statistics over the real
    positions only, zero outputs and gradients at padding (NaN padding is never read), an
    all-padding sequence gives zeros; the running statistics match the native masked path."""
    _set_tile(monkeypatch, tile)
    kind, shape, axis, memory = case
    g = torch.Generator().manual_seed(3)
    n = shape[0]
    positions = shape[2:] if axis == 1 else shape[1:-1]
    mask = torch.rand((n, *positions), generator=g) > 0.35
    mask[1] = False  # one all-padding sequence
    mask[0].view(-1)[:2] = True
    real = mask.unsqueeze(axis % len(shape)).expand(shape)
    x = torch.where(real, torch.randn(shape, generator=g, dtype=D) * 2 + 1,
                    torch.full(shape, float("nan"), dtype=D))
    if memory == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x, mask = x.to(DEVICE), mask.to(DEVICE)
    c = shape[axis]
    w = torch.randn(c, generator=g, dtype=D).to(DEVICE)
    b = torch.randn(c, generator=g, dtype=D).to(DEVICE)
    r = torch.randn(shape, generator=g, dtype=D).to(DEVICE)
    dy = torch.randn(shape, generator=g, dtype=D).to(DEVICE)

    def run(backend):
        xi = x.detach().clone().requires_grad_()
        wi, bi, ri = (t.detach().clone().requires_grad_() for t in (w, b, r))
        kw = dict(channel_axis=axis, residual=ri, activation="silu", mask=mask, backend=backend)
        if kind == "batch":
            rm, rv = torch.zeros(c, dtype=D, device=DEVICE), torch.ones(c, dtype=D, device=DEVICE)
            y = F.batch_norm(xi, rm, rv, wi, bi, training=True, **kw)
            stats = (rm, rv)
        elif kind == "instance":
            rm, rv = torch.zeros(c, dtype=D, device=DEVICE), torch.ones(c, dtype=D, device=DEVICE)
            y = F.instance_norm(xi, rm, rv, wi, bi, use_input_stats=True, **kw)
            stats = (rm, rv)
        else:
            y = F.group_norm(xi, 2, wi, bi, **kw)
            stats = ()
        grads = torch.autograd.grad(y, (xi, wi, bi, ri), dy)
        return (y, *grads, *stats)

    got, want = run("triton"), run(None)  # None on CPU: normlab's masked Function
    for a, e in zip(got, want, strict=True):
        assert not a.isnan().any()
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    assert (got[0][~real] == 0).all() and (got[1][~real] == 0).all()
    assert (got[4][~real] == 0).all()  # the residual's gradient too
    assert got[0].stride() == x.stride()


def test_float16_statistics_do_not_overflow():
    x = (torch.randn(2, 3, 40, dtype=D).clamp(-3, 3) * 2e4).to(torch.float16).to(DEVICE)
    y = F.group_norm(x, 3, backend="triton")
    want = TF.group_norm(x.double(), 3)
    torch.testing.assert_close(y.double(), want, **TOL[torch.float16])


def test_modules_keep_running_statistics_like_torch():
    torch.manual_seed(0)
    ours = nl.BatchNorm2d(6, backend="triton").double().to(DEVICE)
    theirs = torch.nn.BatchNorm2d(6).double().to(DEVICE)
    inst = nl.InstanceNorm1d(4, track_running_stats=True, backend="triton").double().to(DEVICE)
    inst_t = torch.nn.InstanceNorm1d(4, track_running_stats=True).double().to(DEVICE)
    for _ in range(3):
        x = torch.randn(4, 6, 3, 5, dtype=D, device=DEVICE) * 2 + 1
        torch.testing.assert_close(ours(x), theirs(x))
        s = torch.randn(3, 4, 9, dtype=D, device=DEVICE)
        torch.testing.assert_close(inst(s), inst_t(s))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    torch.testing.assert_close(inst.running_var, inst_t.running_var)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 6, 3, 5, dtype=D, device=DEVICE)
    torch.testing.assert_close(ours(x), theirs(x))  # eval: the native path, same buffers


def test_compile_traces_through_the_custom_op():
    x = torch.randn(4, 33, dtype=torch.float32, device=DEVICE)
    w = torch.randn(33, device=DEVICE)

    def f(t):
        return F.layer_norm(t, (33,), w, None, backend="triton", activation="gelu")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))


def test_layouts_the_kernels_do_not_read_fall_back_to_native():
    x = torch.randn(3, 5, 4, dtype=D, device=DEVICE)
    y = F.layer_norm(x, (5,), channel_axis=1, backend="triton")  # block not trailing in memory
    torch.testing.assert_close(y, TF.layer_norm(x.transpose(1, 2), (5,)).transpose(1, 2))
    odd = torch.randn(4, 6, 5, dtype=D, device=DEVICE)[:, :, ::2]  # strided, not dense
    torch.testing.assert_close(F.group_norm(odd, 3, backend="triton"), TF.group_norm(odd, 3))


def test_backend_triton_needs_a_device_or_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"backend 'triton' needs Triton and a CUDA tensor .* "
                                         r"got a cpu tensor"):
        F.layer_norm(torch.randn(2, 3), (3,), backend="triton")
