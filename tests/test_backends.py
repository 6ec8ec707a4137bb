"""The backend matrix: every case of the functional table on every backend that accepts it,
against the float64 oracle and torch.nn; which backend ran is visible; a backend asked for by
name that cannot run a call says so."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import normlab.functional as F
import normlab.nn as nl
from normlab import ops
from tests import oracle
from tests import test_functional as tf
from tests.matrix import BACKENDS, on_backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", tf.CASES, ids=[c[0] for c in tf.CASES])
def test_every_accepting_backend_matches_the_oracle(case, backend):
    _, kind, shape, opts = case
    on_backend(backend, lambda: tf.check_against_oracle(kind, shape, opts, torch.float64,
                                                        backend, residual=True,
                                                        activation="silu"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", tf.CASES, ids=[c[0] for c in tf.CASES])
def test_every_accepting_backend_matches_torch_nn(case, backend):
    _, kind, shape, opts = case
    x, w, b, style = tf._make(kind, shape, opts, torch.float64)
    y = on_backend(backend, lambda: tf._normlab(kind, x, w, b, style, opts, backend))
    torch.testing.assert_close(y, tf._torch_nn(kind, x, w, b, style, opts),
                               **oracle.tol(torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", tf.CASES[::3], ids=[c[0] for c in tf.CASES[::3]])
def test_every_accepting_backend_in_low_precision(case, dtype, backend):
    _, kind, shape, opts = case
    on_backend(backend, lambda: tf.check_against_oracle(kind, shape, opts, dtype, backend))


POINTWISE_CASES = [c for c in tf.CASES if c[1] in ("dyt", "derf")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("epilogue", [(False, None), (True, "relu")], ids=["plain", "res+relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", POINTWISE_CASES, ids=[c[0] for c in POINTWISE_CASES])
def test_every_pointwise_case_in_low_precision(case, dtype, epilogue, backend):
    """DyT/Derf in the dtypes the numba kernels take (they hand float64 on), every case of the
    table, with and without a residual and ReLU."""
    _, kind, shape, opts = case
    residual, activation = epilogue
    on_backend(backend, lambda: tf.check_against_oracle(kind, shape, opts, dtype, backend,
                                                        residual=residual,
                                                        activation=activation))


def test_the_default_choice_is_visible():
    x = torch.randn(4, 3, 5, 5)
    with ops.trace_backends() as ran:
        F.batch_norm(x, None, None, training=True)
        F.instance_norm(x.to(memory_format=torch.channels_last))
        F.group_norm(x, 3, mask=torch.ones(4, 5, 5, dtype=torch.bool))
        F.layer_norm(x, (5,), mask=torch.ones(4, 3, 5, dtype=torch.bool))
        F.layer_norm(x, (5,), backend="reference")
    assert ran == ["native", "hybrid", "masked", "reference", "reference"]
    assert ops.last_backend() == "reference"


def test_a_backend_that_cannot_run_the_call_says_why():
    x = torch.randn(4, 3, 5)
    mask = torch.ones(4, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"backend='native' cannot run this call \(group norm, "
                                         r"input \(4, 3, 5\).*masked\): torch has no masked"):
        F.group_norm(x, 3, mask=mask, backend="native")
    with pytest.raises(ValueError, match=r"backend='masked' cannot run this call .*: no mask"):
        F.batch_norm(x, None, None, training=True, backend="masked")
    with pytest.raises(ValueError, match=r"backend='hybrid' cannot run this call .*only "
                                         r"instance norm"):
        F.layer_norm(x, (5,), backend="hybrid")
    m = nl.LayerNorm(5, backend="native")
    with pytest.raises(ValueError, match="backend='native' cannot run this call"):
        m(x, mask=torch.ones(4, 3, dtype=torch.bool))


@pytest.mark.skipif(not ops.triton_available(), reason="Triton is not installed")
def test_triton_hands_on_what_it_has_no_kernel_for():
    """backend='triton' in eval mode (running statistics) and on AdaIN runs native, visibly."""
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    m = nl.BatchNorm1d(3, backend="triton").double()
    with ops.trace_backends() as ran:
        m(x)
        m.eval()
        m(x)
        F.adaptive_instance_norm(x, x, backend="triton")
    assert ran == ["triton", "native", "native"]


def test_running_statistics_move_the_same_on_every_backend():
    x = torch.randn(6, 3, 7, dtype=torch.float64) * 2 + 1
    got = {}
    for backend in ("native", "reference"):
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        F.batch_norm(x, rm, rv, training=True, momentum=0.3, backend=backend)
        got[backend] = (rm, rv)
    ref = torch.nn.BatchNorm1d(3, momentum=0.3).double()
    ref(x)
    for rm, rv in got.values():
        torch.testing.assert_close(rm, ref.running_mean, **oracle.tol(torch.float64))
        torch.testing.assert_close(rv, ref.running_var, **oracle.tol(torch.float64))


def test_numba_hands_torch_func_transforms_to_torchs_kernels():
    """torch.func's grad crashed inside the numba custom ops (their autograd Function has no
    setup_context) and jvp gave wrong tangents with no error (max 5.17 off on a (1024, 1024)
    layer norm, numba's default there): such calls run torch's kernels, even a call first
    seen (and its choice cached) outside a transform."""
    pytest.importorskip("numba")
    torch.manual_seed(0)
    x, t = torch.randn(64, 96), torch.randn(64, 96)
    for make, ref in ((lambda: nl.LayerNorm(96, backend="numba"), torch.nn.LayerNorm(96)),
                      (lambda: nl.RMSNorm(96, backend="numba"), torch.nn.RMSNorm(96)),
                      (lambda: nl.BatchNorm1d(96, track_running_stats=False, backend="numba"),
                       torch.nn.BatchNorm1d(96, track_running_stats=False))):
        m = make()
        with ops.trace_backends() as ran:
            m(x)  # outside a transform: numba, and the choice cached
        assert ran == ["numba"]
        with ops.trace_backends() as ran:
            tangent = torch.func.jvp(m, (x,), (t,))[1]
        assert ran == ["native"]
        torch.testing.assert_close(tangent, torch.func.jvp(ref, (x,), (t,))[1])
        params = {k: v.detach() for k, v in m.named_parameters()}

        def loss(module):
            return lambda p, x: torch.func.functional_call(module, p, (x,)).sin().sum()
        got = torch.func.grad(loss(m), argnums=(0, 1))(params, x)
        want = torch.func.grad(loss(ref), argnums=(0, 1))(params, x)
        torch.testing.assert_close(got, want)


def _same_jvp_and_grad(m, ref, x, t):
    """torch.func's jvp (tangent ``t``) and grad of ``sin(f(x)).sum()`` agree for ``m`` and
    ``ref``."""
    torch.testing.assert_close(torch.func.jvp(m, (x,), (t,))[1],
                               torch.func.jvp(ref, (x,), (t,))[1])
    got, want = (torch.func.grad(lambda x, f=f: f(x).sin().sum())(x) for f in (m, ref))
    torch.testing.assert_close(got, want)


def test_forward_mode_ad_and_torch_func_run_on_torchs_kernels():
    """Forward-mode AD (``torch.autograd.forward_ad``, not a torch.func transform) raised
    NotImplementedError in numba's custom ops (no jvp), by default from 256 Ki elements; and
    instance norm with the channel innermost in memory, whose default at any size is the
    ``hybrid`` backend (an autograd Function with no setup_context or jvp), raised under
    forward-mode AD and under every torch.func transform, where torch.nn's instance norm works;
    so did DyT/Derf's autograd Function (``native``) at any size. Such calls run torch's
    kernels (DyT/Derf: the reference's torch ops), even one first seen (and its choice cached)
    outside."""
    fwad = torch.autograd.forward_ad
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 7).to(memory_format=torch.channels_last)
    t = torch.randn_like(x)
    rows, rows_t = torch.randn(64, 96), torch.randn(64, 96)
    cases = [(nl.InstanceNorm2d(6, affine=True), torch.nn.InstanceNorm2d(6, affine=True), x, t)]
    if importlib.util.find_spec("numba") is not None:
        cases += [(nl.RMSNorm(96, backend="numba"), torch.nn.RMSNorm(96), rows, rows_t),
                  (nl.BatchNorm1d(96, track_running_stats=False, backend="numba"),
                   torch.nn.BatchNorm1d(96, track_running_stats=False), rows, rows_t)]
    for m, ref, x, t in cases:
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
        ref.load_state_dict(m.state_dict())
        with ops.trace_backends() as ran:
            m(x)  # outside: hybrid / numba, and the choice cached
        assert ran[0] in ("hybrid", "numba")
        for _ in range(2):
            with fwad.dual_level(), ops.trace_backends() as ran:
                got = fwad.unpack_dual(m(fwad.make_dual(x, t))).tangent
            assert ran == ["native"]
            with fwad.dual_level():
                want = fwad.unpack_dual(ref(fwad.make_dual(x, t))).tangent
            torch.testing.assert_close(got, want)
        _same_jvp_and_grad(m, ref, x, t)
    # group norm on that layout: torch's kernel, by a shortcut made outside (torch.nn.GroupNorm
    # itself raises there: compared on a contiguous copy)
    m, ref, x, t = nl.GroupNorm(2, 6), torch.nn.GroupNorm(2, 6), cases[0][2], cases[0][3]
    m(x), m(x)
    with fwad.dual_level():
        got = fwad.unpack_dual(m(fwad.make_dual(x, t))).tangent
        want = fwad.unpack_dual(ref(fwad.make_dual(x.contiguous(), t.contiguous()))).tangent
    torch.testing.assert_close(got, want)
    # DyT / Derf (their Function raised under both): against the same formula in torch ops
    x, t = cases[0][2], cases[0][3]
    for m, fn in ((nl.DynamicTanh(7), torch.tanh), (nl.Derf(7, shift_init=0.3), torch.erf)):
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)

        def ref(x, m=m, fn=fn):
            return fn(m.alpha * x + getattr(m, "shift", 0.0)) * m.weight + m.bias
        with fwad.dual_level():
            got = fwad.unpack_dual(m(fwad.make_dual(x, t))).tangent
            want = fwad.unpack_dual(ref(fwad.make_dual(x, t))).tangent
        torch.testing.assert_close(got, want)
        _same_jvp_and_grad(m, ref, x, t)
