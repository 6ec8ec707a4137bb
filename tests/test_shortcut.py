"""The modules' shortcut to torch's kernel (``normlab.nn._shortcut``): after a call that ran on
``native``, the next calls skip validation and dispatch. Everything observable must stay as on
the full path: outputs and gradients bit for bit (against torch.nn, whose kernels these are,
and against the same normlab module with its shortcut dropped before every call), running
statistics and batch counts, the recorded backend, and the errors for bad input -- also after
the module's settings or tensors change under a kept shortcut, which a stale one would miss."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn as tnn

import normlab.nn as nl
from normlab import ops

# (id, normlab class, torch class or None where torch.nn's kernel differs, args, input shape)
CASES = [
    ("BatchNorm2d", nl.BatchNorm2d, tnn.BatchNorm2d, (3,), (4, 3, 5, 7)),
    ("BatchNorm1d-NC", nl.BatchNorm1d, tnn.BatchNorm1d, (5,), (7, 5)),
    ("LayerNorm", nl.LayerNorm, tnn.LayerNorm, (6,), (4, 3, 6)),
    ("GroupNorm", nl.GroupNorm, tnn.GroupNorm, (2, 6), (3, 6, 5)),
    ("RMSNorm", nl.RMSNorm, tnn.RMSNorm, (6, 1e-6), (5, 6)),  # eps=None: see the report
    # torch.nn's instance norm is another kernel (normlab runs group norm with C groups)
    ("InstanceNorm2d", nl.InstanceNorm2d, None, (3,), (2, 3, 4, 5)),
]
DTYPES = [torch.float64, torch.bfloat16]


def _set_weight(m, gen):
    w = m._parameters.get("weight")
    if w is not None:
        m.weight = tnn.Parameter(torch.rand(w.shape, generator=gen, dtype=torch.float64)
                                 .to(w.dtype) + 0.5)


def _data_swap(m, gen):
    w = m._parameters.get("weight")
    if w is not None:  # the same Parameter object, another storage
        w.data = torch.rand(w.shape, generator=gen, dtype=torch.float64).to(w.dtype) - 0.5


def _set(name, value):
    def change(m, gen):
        if hasattr(m, name):
            setattr(m, name, value)
    return change


def _new_running(m, gen):
    if getattr(m, "running_mean", None) is not None:
        m.running_mean = torch.randn(m.running_mean.shape, generator=gen,
                                     dtype=torch.float64).to(m.running_mean.dtype)


# applied to every module of a test in turn (each a no-op where the module lacks the attribute)
CHANGES = [
    ("train", lambda m, gen: m.train()),
    ("eval", lambda m, gen: m.eval()),
    ("train again", lambda m, gen: m.train()),
    ("momentum", _set("momentum", 0.5)),
    ("eps", _set("eps", 1e-2)),
    ("new weight", _set_weight),
    ("weight.data swapped", _data_swap),
    ("weight frozen", lambda m, gen: [p.requires_grad_(False) for p in m.parameters()]),
    ("new running_mean", _new_running),
    ("cumulative average", _set("momentum", None)),
    ("no running statistics", _set("track_running_stats", False)),
    ("eval without running statistics", lambda m, gen: m.eval()),
]


def _modules(case, dtype):
    _, nl_cls, t_cls, args, _ = case
    torch.manual_seed(0)
    ours = nl_cls(*args, dtype=dtype)
    full = nl_cls(*args, dtype=dtype)  # the full path: its shortcut dropped before every call
    ref = None if t_cls is None else t_cls(*args, dtype=dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.rand_like(p, dtype=torch.float64) + 0.5)
    for m in (full, ref):
        if m is not None:
            m.load_state_dict(ours.state_dict())
    return ours, full, ref


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a, b, what):
    assert (a is None) == (b is None), what
    if a is not None:
        assert a.dtype == b.dtype and a.shape == b.shape, what
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(
            a.nan_to_num(), b.nan_to_num()), f"{what}: max diff {(a - b).abs().max()}"


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_shortcut_changes_nothing_observable(case, dtype, grad):
    ours, full, ref = _modules(case, dtype)
    shape = case[4]
    gen = torch.Generator().manual_seed(1)
    full_calls = []  # the steps on which ours ran its full path
    forward = ours._forward

    def counted(*args):
        full_calls.append((what, step))
        return forward(*args)
    ours._forward = counted
    for what, change in CHANGES:
        seed = int(torch.randint(1 << 30, (1,), generator=gen))
        mods = [m for m in (ours, full, ref) if m is not None]
        for m in mods:  # the same change, with the same random values, on every module
            change(m, torch.Generator().manual_seed(seed))
        for step in range(3):  # the first call keeps a shortcut, the next ones take it
            x0 = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).to(dtype)
            full.__dict__["_shortcut"] = None
            outs = []
            for m in mods:
                x = x0.clone().requires_grad_(grad)
                with ops.trace_backends() as ran, torch.set_grad_enabled(grad):
                    y = m(x)
                if m is not full:  # (torch.nn records nothing)
                    assert ran == (["native"] if m is ours else []), (what, ran)
                if grad:
                    y.backward(torch.linspace(-1, 1, y.numel(), dtype=torch.float64)
                               .reshape(y.shape).to(dtype))
                outs.append((y.detach(), x.grad, _state(m),
                             {k: p.grad for k, p in m.named_parameters()}))
            names = ("the full path", "torch.nn")[:len(outs) - 1]
            for other, name in zip(outs[1:], names, strict=True):
                where = f"{what}, step {step}, against {name}"
                _same(outs[0][0], other[0], f"output: {where}")
                _same(outs[0][1], other[1], f"input gradient: {where}")
                assert outs[0][2].keys() == other[2].keys(), where
                for k in outs[0][2]:
                    _same(outs[0][2][k], other[2][k], f"{k}: {where}")
                for k in outs[0][3]:
                    _same(outs[0][3][k], other[3][k], f"{k}.grad: {where}")
        for m in mods:
            m.zero_grad(set_to_none=True)
    # the shortcut was taken: the last of each change's three calls never ran the full path
    assert full_calls and not [c for c in full_calls if c[1] == 2], full_calls


def test_the_shortcut_is_kept_and_dropped_when_the_module_changes():
    m = nl.BatchNorm2d(3)
    x = torch.randn(2, 3, 4, 4)
    m(x)
    assert m._shortcut is None  # made on the second call in a row with one input layout
    m(x)
    kept = m._shortcut
    assert kept is not None
    m(x)
    assert m._shortcut is kept  # taken, not rebuilt
    m.train()  # the same value: nothing changes
    assert m._shortcut is kept
    m.eval()
    assert m._shortcut is None
    m(x)  # (the layout was seen)
    assert m._shortcut is not None
    m.float()  # _apply
    assert m._shortcut is None
    m(x)
    del m.weight
    assert m._shortcut is None
    # inputs whose shape changes every call make none; the kept one stays for its layout
    m = nl.LayerNorm(4)
    for t in range(3, 9):
        m(torch.randn(2, t, 4))
        assert m._shortcut is None
    m(torch.randn(2, 8, 4))
    kept = m._shortcut
    assert kept is not None
    m(torch.randn(2, 5, 4))
    assert m._shortcut is kept
    # not kept where more than torch's kernel runs: an activation, a residual, a mask
    for mod, kw in ((nl.BatchNorm2d(3, activation="relu"), {}),
                    (nl.BatchNorm2d(3), {"residual": torch.randn(2, 3, 4, 4)}),
                    (nl.BatchNorm2d(3), {"mask": torch.ones(2, 4, 4, dtype=torch.bool)}),
                    (nl.BatchNorm2d(3, backend="reference"), {})):
        mod(x, **kw)
        mod(x, **kw)
        assert mod._shortcut is None, (mod, kw)


def test_bad_input_raises_as_before_with_a_shortcut_kept():
    cases = [  # (module, good input, bad input, error, message)
        (nl.BatchNorm2d(3), torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4), ValueError,
         "expected 3 channels"),
        (nl.BatchNorm2d(3), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4), ValueError,
         "expected 4D input"),
        (nl.BatchNorm2d(3), torch.randn(2, 3, 4, 4), torch.randn(1, 3, 1, 1), ValueError,
         "more than 1 value per channel"),
        (nl.LayerNorm(4), torch.randn(2, 4), torch.randn(2, 5), ValueError,
         "normalized_shape"),
        (nl.LayerNorm(4), torch.randn(2, 4), torch.randint(0, 3, (2, 4)), TypeError,
         "floating-point"),
        (nl.GroupNorm(2, 4), torch.randn(2, 4, 3), torch.randn(2, 4, 3, dtype=torch.float64),
         TypeError, "weight must have the input's dtype"),
    ]
    for m, good, bad, err, msg in cases:
        m(good)
        m(good)
        assert m._shortcut is not None
        with pytest.raises(err, match=msg):
            m(bad)
    # a parameter's dtype changed in place under the kept shortcut (the same object)
    m = nl.LayerNorm(4)
    x = torch.randn(2, 4)
    m(x)
    m(x)
    m.weight.data = m.weight.data.double()
    with pytest.raises(TypeError, match="weight must have the input's dtype"):
        m(x)
    m = nl.BatchNorm2d(3)  # a buffer of another shape, in place
    x = torch.randn(2, 3, 4, 4)
    m(x)
    m(x)
    m.running_mean.data = torch.zeros(4)
    with pytest.raises(ValueError, match="running_mean must have shape"):
        m(x)


def test_the_shortcut_follows_the_input_layout_and_autograd():
    m, ref = nl.GroupNorm(2, 4), tnn.GroupNorm(2, 4)
    x = torch.randn(3, 4, 5, 6)
    for t in (x, x, x.contiguous(memory_format=torch.channels_last), x[:, :, ::2], x[:2],
              x.double(), x):
        mm, rr = (m, ref) if t.dtype == torch.float32 else (m.double(), ref.double())
        _same(mm(t), rr(t), f"{tuple(t.shape)} {t.stride()}")
        m, ref = m.float(), ref.float()
    # a kept shortcut of a call without autograd, then one with it (the choice may differ)
    x = torch.randn(2, 4, 5, requires_grad=True)
    with torch.no_grad():
        m(x)
        m(x)
    y = m(x)
    assert y.requires_grad
    y.sum().backward()
    assert x.grad is not None and m.weight.grad is not None


def test_a_copy_or_a_pickle_never_carries_the_shortcut():
    m = nl.BatchNorm2d(3)
    x = torch.randn(2, 3, 4, 4)
    m(x)
    m(x)
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert c._shortcut is None
        with torch.no_grad():
            c.weight.mul_(3)
        ref = tnn.BatchNorm2d(3)
        ref.load_state_dict(c.state_dict())
        for _ in range(3):  # its own shortcut, over its own tensors
            _same(c(x), ref(x), "the copy's output")
        assert c._shortcut is not None
        _same(c.running_var, ref.running_var, "the copy's running_var")
        assert int(c.num_batches_tracked) == 5
    assert int(m.num_batches_tracked) == 2


def test_torch_func_sees_the_parameters_it_is_given():
    m = nl.LayerNorm(4)
    x = torch.randn(3, 4)
    m(x)
    m(x)  # a kept shortcut over m's own weight
    w = torch.full((4,), 2.0)
    y = torch.func.functional_call(m, {"weight": w, "bias": torch.zeros(4)}, (x,))
    _same(y, 2 * m(x).detach(), "functional_call's weight")
    g = torch.func.grad(lambda w: torch.func.functional_call(
        m, {"weight": w, "bias": torch.zeros(4)}, (x,)).square().sum())(w)
    want = 2 * w * torch.nn.functional.layer_norm(x, (4,)).square().sum(0)
    torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-6)


def test_a_shortcut_made_under_forward_mode_ad_is_not_kept_after_it():
    """Inside a forward-mode AD ``dual_level`` the dispatcher hands numba's and hybrid's calls
    to torch's kernels (their Functions have no jvp); a shortcut made there ran torch's kernel
    after the dual level too, where the full path runs hybrid (channels-last instance norm:
    normlab's closed-form backward, torch's is slow for that layout) or numba."""
    fwad = torch.autograd.forward_ad
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    m = nl.InstanceNorm2d(3, affine=True)
    with ops.trace_backends() as ran:
        m(x)
        with fwad.dual_level():
            for _ in range(3):
                m(fwad.make_dual(x, torch.randn_like(x)))
        m(x), m(x)
    assert ran == ["hybrid", "native", "native", "native", "hybrid", "hybrid"]
