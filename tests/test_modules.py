"""Module parity with torch.nn: outputs, every gradient, running statistics over several training
steps and eval outputs, from the same state (loaded strictly through state dicts)."""

from __future__ import annotations

import pytest
import torch
from torch import nn as tnn

import normlab.nn as nl
from tests import oracle

# (id, normlab class, torch class, constructor args, input shape)
MODULES = [
    ("BatchNorm1d-NC", nl.BatchNorm1d, tnn.BatchNorm1d, (5,), (7, 5)),
    ("BatchNorm1d-NCL", nl.BatchNorm1d, tnn.BatchNorm1d, (5,), (3, 5, 7)),
    ("BatchNorm2d", nl.BatchNorm2d, tnn.BatchNorm2d, (3,), (4, 3, 5, 7)),
    ("BatchNorm2d-N1", nl.BatchNorm2d, tnn.BatchNorm2d, (2,), (1, 2, 1, 13)),
    ("BatchNorm3d", nl.BatchNorm3d, tnn.BatchNorm3d, (3,), (2, 3, 2, 3, 5)),
    ("InstanceNorm1d", nl.InstanceNorm1d, tnn.InstanceNorm1d, (3,), (2, 3, 7)),
    ("InstanceNorm2d", nl.InstanceNorm2d, tnn.InstanceNorm2d, (5,), (3, 5, 4, 3)),
    ("InstanceNorm3d", nl.InstanceNorm3d, tnn.InstanceNorm3d, (2,), (2, 2, 3, 2, 5)),
    ("LayerNorm", nl.LayerNorm, tnn.LayerNorm, (5,), (7, 5)),
    ("LayerNorm-block", nl.LayerNorm, tnn.LayerNorm, ((4, 5),), (3, 4, 5)),
    ("LayerNorm-1023", nl.LayerNorm, tnn.LayerNorm, (1023,), (2, 1023)),
    ("GroupNorm", nl.GroupNorm, tnn.GroupNorm, (3, 6), (2, 6, 7)),
    ("GroupNorm-2d", nl.GroupNorm, tnn.GroupNorm, (4, 8), (3, 8, 5, 5)),
    ("RMSNorm", nl.RMSNorm, tnn.RMSNorm, (5,), (7, 5)),
    ("RMSNorm-block", nl.RMSNorm, tnn.RMSNorm, ((4, 5),), (3, 4, 5)),
]

OPTIONS = {  # constructor keyword sets tried per family
    "Batch": [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
              {"momentum": 0.3, "eps": 1e-3}, {"bias": False}],
    "Instance": [{}, {"affine": True}, {"affine": True, "track_running_stats": True},
                 {"track_running_stats": True, "momentum": 0.3}],
    "Layer": [{}, {"elementwise_affine": False}, {"bias": False}, {"eps": 1e-3}],
    "Group": [{}, {"affine": False}, {"eps": 1e-3}, {"bias": False}],
    "RMS": [{}, {"eps": 1e-6}, {"elementwise_affine": False}],
}

PARAMS = [(m, o) for m in MODULES for fam, opts in OPTIONS.items()
          if m[1].__name__.startswith(fam) for o in opts]
TOL = {d: oracle.tol(d) for d in (torch.float64, torch.float32)}  # tests/oracle.py


def _twin(case, opts, dtype, seed=0):
    _, nl_cls, t_cls, args, _ = case
    torch.manual_seed(seed)
    ref = t_cls(*args, **opts, dtype=dtype)
    with torch.no_grad():  # a non-trivial state, so that loading it is visible
        for p in ref.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
        for name, buf in ref.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf))
            elif name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) + 0.5)
    ours = nl_cls(*args, **opts, dtype=dtype)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _compare_state(ref, ours, tol):
    sd_ref, sd_ours = ref.state_dict(), ours.state_dict()
    assert list(sd_ref) == list(sd_ours)
    for k in sd_ref:
        if k == "num_batches_tracked" and isinstance(ours, nl.InstanceNorm):
            continue  # torch.nn's InstanceNorm never counts batches; normlab's does (documented)
        torch.testing.assert_close(sd_ours[k], sd_ref[k], **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case,opts", PARAMS,
                         ids=[f"{m[0]}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}"
                              for m, o in PARAMS])
@pytest.mark.parametrize("backend", [None, "reference"])
def test_parity_with_torch_nn(case, opts, dtype, backend):
    ref, ours = _twin(case, opts, dtype)
    ours.backend = backend
    tol = TOL[dtype]
    shape = case[4]
    for step in range(3):
        x = torch.randn(shape, dtype=dtype) * (1 + step) + step
        dy = torch.randn(shape, dtype=dtype)
        xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        yr, yo = ref(xr), ours(xo)
        torch.testing.assert_close(yo, yr, **tol)
        yr.backward(dy)
        yo.backward(dy)
        torch.testing.assert_close(xo.grad, xr.grad, **tol)
        for (name, pr), po in zip(ref.named_parameters(), ours.parameters(), strict=True):
            torch.testing.assert_close(po.grad, pr.grad, **tol, msg=name)
        _compare_state(ref, ours, tol)
    ref.eval()
    ours.eval()
    x = torch.randn(shape, dtype=dtype) * 2 - 1
    torch.testing.assert_close(ours(x), ref(x), **tol)


@pytest.mark.parametrize("case", [m for m in MODULES if m[0] in
                                  ("BatchNorm2d", "InstanceNorm2d", "GroupNorm-2d")],
                         ids=lambda m: m[0])
@pytest.mark.parametrize("backend", [None, "reference"])
def test_channels_last_and_channel_axis(case, backend):
    """The same module state on NCHW, channels_last NCHW and NHWC (channel_axis=-1) inputs."""
    opts = {"affine": True, "track_running_stats": True} if "Instance" in case[0] else {}
    ref, ours = _twin(case, opts, torch.float64)
    nhwc = case[1](*case[3], **opts, dtype=torch.float64, channel_axis=-1, backend=backend)
    nhwc.load_state_dict(ref.state_dict())
    ours.backend = backend
    x = torch.randn(case[4], dtype=torch.float64)
    dy = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    yr = ref(xr)
    yr.backward(dy)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    yc = ours(xc)
    assert yc.is_contiguous(memory_format=torch.channels_last)
    yc.backward(dy)
    xl = x.permute(0, 2, 3, 1).contiguous().requires_grad_()
    yl = nhwc(xl)
    assert yl.is_contiguous()
    yl.backward(dy.permute(0, 2, 3, 1))
    for y, g in ((yc, xc.grad), (yl.permute(0, 3, 1, 2), xl.grad.permute(0, 3, 1, 2))):
        torch.testing.assert_close(y, yr)
        torch.testing.assert_close(g, xr.grad)
    for m in (ours, nhwc):
        _compare_state(ref, m, TOL[torch.float64])


def test_state_dict_keys_and_loading_both_ways():
    pairs = [(nl.BatchNorm2d(4), tnn.BatchNorm2d(4)),
             (nl.BatchNorm1d(4, affine=False, track_running_stats=False),
              tnn.BatchNorm1d(4, affine=False, track_running_stats=False)),
             (nl.InstanceNorm2d(4), tnn.InstanceNorm2d(4)),
             (nl.InstanceNorm2d(4, affine=True, track_running_stats=True),
              tnn.InstanceNorm2d(4, affine=True, track_running_stats=True)),
             (nl.LayerNorm(4, bias=False), tnn.LayerNorm(4, bias=False)),
             (nl.LayerNorm(4, elementwise_affine=False),
              tnn.LayerNorm(4, elementwise_affine=False)),
             (nl.BatchNorm2d(4, bias=False), tnn.BatchNorm2d(4, bias=False)),
             (nl.GroupNorm(2, 4, affine=False), tnn.GroupNorm(2, 4, affine=False)),
             (nl.RMSNorm(4), tnn.RMSNorm(4))]
    for ours, ref in pairs:
        assert list(ours.state_dict()) == list(ref.state_dict())
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        ours.load_state_dict(ref.state_dict(), strict=True)
        ref.load_state_dict(ours.state_dict(), strict=True)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert hasattr(ours, name) == hasattr(ref, name)
            assert (getattr(ours, name, None) is None) == (getattr(ref, name, None) is None)


def test_old_state_dict_without_num_batches_tracked_loads():
    sd = tnn.BatchNorm2d(3).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata[""]["version"] = 1
    m = nl.BatchNorm2d(3)
    m.num_batches_tracked.fill_(7)
    m.load_state_dict(sd, strict=True)
    assert m.num_batches_tracked.item() == 0


def test_momentum_none_is_cumulative_average():
    for m in (nl.BatchNorm1d(3), nl.InstanceNorm1d(3, track_running_stats=True)):
        m.momentum = None
        xs = [torch.randn(4, 3, 6, dtype=torch.float64) * (i + 1) + i for i in range(4)]
        m.double()
        for x in xs:
            m(x)
        dims = (0, 2) if isinstance(m, nl.BatchNorm) else (2,)
        var_means = [torch.var_mean(x, dims, correction=1) for x in xs]
        means = torch.stack([vm[1] if vm[1].dim() == 1 else vm[1].mean(0) for vm in var_means])
        vars_ = torch.stack([vm[0] if vm[0].dim() == 1 else vm[0].mean(0) for vm in var_means])
        torch.testing.assert_close(m.running_mean, means.mean(0))
        torch.testing.assert_close(m.running_var, vars_.mean(0))
        assert m.num_batches_tracked.item() == 4


def test_empty_batch_leaves_module_state_unchanged():
    m = nl.BatchNorm2d(3)
    m(torch.randn(4, 3, 2, 2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y = m(torch.randn(0, 3, 2, 2))
    assert y.shape == (0, 3, 2, 2)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unbatched_instance_norm():
    ours, ref = nl.InstanceNorm2d(3, affine=True), tnn.InstanceNorm2d(3, affine=True)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(ours(x), ref(x))


def test_extra_repr_is_truthful():
    assert repr(nl.BatchNorm2d(4)) == ("BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, "
                                       "bias=True, track_running_stats=True)")
    assert repr(nl.GroupNorm(2, 4, bias=False)) == \
        "GroupNorm(2, 4, eps=1e-05, affine=True, bias=False)"
    assert repr(nl.LayerNorm(4)) == "LayerNorm((4,), eps=1e-05, elementwise_affine=True)"
    assert repr(nl.RMSNorm(4)) == "RMSNorm((4,), eps=None, elementwise_affine=True)"
    assert repr(nl.InstanceNorm1d(4)) == ("InstanceNorm1d(4, eps=1e-05, momentum=0.1, "
                                          "affine=False, bias=False, track_running_stats=False)")
    r = repr(nl.BatchNorm2d(4, momentum=None, channel_axis=-1, activation="relu"))
    assert r == ("BatchNorm2d(4, eps=1e-05, momentum=None, affine=True, bias=True, "
                 "track_running_stats=True, channel_axis=-1, activation='relu')")
    assert repr(nl.LayerNorm(4, bias=False)) == \
        "LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=False)"
    assert repr(nl.AdaptiveInstanceNorm(8)) == "AdaptiveInstanceNorm(8, eps=1e-05)"


def test_factory_kwargs_and_reset():
    m = nl.BatchNorm2d(4, dtype=torch.float64, device="cpu")
    assert m.weight.dtype == m.running_mean.dtype == torch.float64
    assert m.num_batches_tracked.dtype == torch.long
    assert nl.GroupNorm(2, 4, dtype=torch.bfloat16).weight.dtype == torch.bfloat16
    assert nl.LayerNorm(4, dtype=torch.float16).bias.dtype == torch.float16
    m(torch.randn(3, 4, 2, 2, dtype=torch.float64))
    with torch.no_grad():
        m.weight.fill_(3)
    m.reset_parameters()
    assert torch.equal(m.weight, torch.ones(4, dtype=torch.float64))
    assert torch.equal(m.running_mean, torch.zeros(4, dtype=torch.float64))
    assert m.num_batches_tracked.item() == 0


def test_fused_epilogue_on_modules():
    torch.manual_seed(0)
    x, r = torch.randn(4, 6, 3, 3), torch.randn(4, 6, 3, 3)
    for ours, plain, act in [
        (nl.BatchNorm2d(6, activation="relu"), tnn.BatchNorm2d(6), torch.relu),
        (nl.GroupNorm(3, 6, activation="silu"), tnn.GroupNorm(3, 6), tnn.functional.silu),
        (nl.LayerNorm(3, activation="gelu"), tnn.LayerNorm(3), tnn.functional.gelu),
    ]:
        torch.testing.assert_close(ours(x, r), act(plain(x) + r))
        torch.testing.assert_close(ours(x), act(plain(x)))


def test_adain_module():
    m = nl.AdaptiveInstanceNorm(3)
    c = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    s = torch.randn(2, 3, 5, 5, dtype=torch.float64) * 4 + 2
    y = m(c, s)
    var_y, mean_y = torch.var_mean(y, (2, 3), correction=0)
    var_s, mean_s = torch.var_mean(s, (2, 3), correction=0)
    torch.testing.assert_close(mean_y, mean_s)
    # std(y) = sigma_s * std(xhat) with std(xhat) = sqrt(var_c / (var_c + eps))
    var_c = torch.var(c, (2, 3), correction=0)
    torch.testing.assert_close(var_y, (var_s + 1e-5) * var_c / (var_c + 1e-5))




@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", [m for m in MODULES if m[0] not in ("BatchNorm2d-N1",)],
                         ids=lambda m: m[0])
def test_half_precision_parity_with_torch_nn(case, dtype):
    """Half inputs with float32 parameters (the usual mixed-precision setup): normlab on the
    half input against torch.nn in float64 on the same (rounded) values."""
    ref, ours = _twin(case, {}, torch.float32)
    ref64 = case[2](*case[3], dtype=torch.float64)
    ref64.load_state_dict(ref.state_dict())
    x = torch.randn(case[4]) * 3 + 1
    xh = x.to(dtype).requires_grad_()
    x64 = xh.detach().double().requires_grad_()
    dy = torch.randn(case[4])
    y, y64 = ours(xh), ref64(x64)
    assert y.dtype == dtype
    oracle.close(y, y64, dtype)
    y.backward(dy.to(dtype))
    y64.backward(dy.double())
    oracle.close(xh.grad, x64.grad, dtype)
    for p, p64 in zip(ours.parameters(), ref64.parameters(), strict=True):
        scale = max(1.0, p64.grad.abs().max().item())  # sums over many elements
        oracle.close(p.grad.double() / scale, p64.grad / scale, dtype)


class _Doubled(tnn.Module):
    def forward(self, t):
        return 2 * t


@pytest.mark.parametrize("make", [lambda: (nl.BatchNorm2d(3), tnn.BatchNorm2d(3)),
                                  lambda: (nl.InstanceNorm2d(3, affine=True,
                                                             track_running_stats=True),
                                           tnn.InstanceNorm2d(3, affine=True,
                                                              track_running_stats=True))])
def test_parametrized_weights_and_buffers_are_read_as_torch_nn_reads_them(make):
    """The modules read their parameters and buffers from the module's dicts (faster than
    nn.Module.__getattr__); a parametrization turns one into a property: that is read."""
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    mine, ref = _parametrized(make)
    for train in (True, False):
        mine.train(train)
        ref.train(train)
        oracle.close(mine(x), ref(x), torch.float64)


def _parametrized(make):
    from torch.nn.utils import parametrize

    for m in make():
        m.double()
        with torch.no_grad():
            m.bias.add_(0.5)
        parametrize.register_parametrization(m, "weight", _Doubled())
        parametrize.register_parametrization(m, "running_var", _Doubled())
        yield m


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64],
                         ids=["bf16", "f16", "f32", "f64"])
@pytest.mark.parametrize("backend", [None, "reference"])
def test_rms_norm_default_eps_is_torchs(dtype, backend):
    """``eps=None`` is the epsilon torch.nn.RMSNorm's kernel uses: the statistics dtype's
    (float32's for half input; bfloat16's own, 0.0078, would swamp the mean square of small
    activations). The input is scaled so that mean(x^2) is ten times that epsilon: the eps
    moves the output by ~5%, so a wrong one (the input dtype's, or none) shows."""
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    torch.manual_seed(0)
    x = (torch.randn(6, 64, dtype=torch.float64) * (10 * eps) ** 0.5).to(dtype)
    ref = tnn.RMSNorm(64, eps=None, dtype=dtype)
    ours = nl.RMSNorm(64, eps=None, dtype=dtype, backend=backend)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(64) + 0.5)
    ours.load_state_dict(ref.state_dict(), strict=True)
    expected = ref(x)
    oracle.close(ours(x), expected, dtype)
    without = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True))
    assert (expected.double() - without * ref.weight.double()).abs().max() > 0.02  # eps counts
