"""Batch renorm, ghost batch norm and frozen batch norm against their defining formulas; the
sync/freeze conversions."""

from __future__ import annotations

import copy

import pytest
import torch

import normlab
import normlab.functional as F
import normlab.nn as nl
from normlab.surgery import convert_sync_batchnorm, fold_batch_norm, freeze_batch_norm

D = torch.float64


def _renorm_formula(x, rm, rv, w, b, eps, r_max, d_max):
    """Ioffe 2017, Algorithm 1, written out for (N, C, L)."""
    mu = x.mean((0, 2))
    sigma_b = torch.sqrt(x.var((0, 2), correction=0) + eps)
    sigma = torch.sqrt(rv + eps)
    r = (sigma_b / sigma).clamp(1 / r_max, r_max).detach()
    d = ((mu - rm) / sigma).clamp(-d_max, d_max).detach()
    xhat = (x - mu[None, :, None]) / sigma_b[None, :, None] * r[None, :, None] \
        + d[None, :, None]
    return xhat * w[None, :, None] + b[None, :, None]


@pytest.mark.parametrize("r_max,d_max", [(3.0, 5.0), (1.5, 0.2), (1.0, 0.0)])
def test_batch_renorm_matches_its_formula(r_max, d_max):
    torch.manual_seed(0)
    m = nl.BatchRenorm1d(4, r_max=r_max, d_max=d_max, momentum=0.2, dtype=D)
    with torch.no_grad():
        m.running_mean.copy_(torch.tensor([0.5, -1.0, 3.0, 0.0]))
        m.running_var.copy_(torch.tensor([0.2, 4.0, 1.0, 9.0]))
        m.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        m.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
    rm0, rv0 = m.running_mean.clone(), m.running_var.clone()
    x = (torch.randn(6, 4, 5, dtype=D) * 2 + 1).requires_grad_()
    xo = x.detach().clone().requires_grad_()
    wo, bo = m.weight.detach().clone().requires_grad_(), m.bias.detach().clone().requires_grad_()
    y = m(x)
    want = _renorm_formula(xo, rm0, rv0, wo, bo, m.eps, r_max, d_max)
    torch.testing.assert_close(y, want)
    dy = torch.randn_like(y)
    y.backward(dy)
    want.backward(dy)
    torch.testing.assert_close(x.grad, xo.grad)
    torch.testing.assert_close(m.weight.grad, wo.grad)
    var, mean = torch.var_mean(x.detach(), (0, 2), correction=1)
    torch.testing.assert_close(m.running_mean, 0.8 * rm0 + 0.2 * mean)
    torch.testing.assert_close(m.running_var, 0.8 * rv0 + 0.2 * var)
    if r_max == 1.0 and d_max == 0.0:  # then it is batch norm
        bn = torch.nn.BatchNorm1d(4, dtype=D)
        bn.load_state_dict({k: v for k, v in m.state_dict().items()}, strict=False)
        torch.testing.assert_close(y, bn(x.detach()))
    m.eval()
    torch.testing.assert_close(
        m(x.detach()), F.batch_norm(x.detach(), m.running_mean, m.running_var, m.weight,
                                    m.bias, False))


def test_batch_renorm_warmup_ramps_the_limits():
    m = nl.BatchRenorm2d(2, r_max=3.0, d_max=4.0, warmup_steps=4)
    assert m.current_limits() == (1.0, 0.0)
    for _ in range(2):
        m(torch.randn(3, 2, 2, 2))
    assert m.current_limits() == (2.0, 2.0)
    for _ in range(5):
        m(torch.randn(3, 2, 2, 2))
    assert m.current_limits() == (3.0, 4.0)
    with pytest.raises(ValueError, match=r"r_max must be a number >= 1, got 0.5"):
        nl.BatchRenorm1d(2, r_max=0.5)
    with pytest.raises(ValueError, match=r"d_max must be a number >= 0, got -1"):
        F.batch_renorm(torch.randn(3, 2), torch.zeros(2), torch.ones(2), training=True,
                       d_max=-1)
    with pytest.raises(ValueError, match="running_mean and running_var are required when "
                                         "batch_renorm trains"):
        F.batch_renorm(torch.randn(3, 2), None, None, training=True)


@pytest.mark.parametrize("n,k", [(8, 4), (10, 4), (6, 6), (12, 5)])
def test_ghost_batch_norm_equals_batch_norm_on_each_chunk(n, k):
    torch.manual_seed(0)
    ghost = nl.GhostBatchNorm2d(3, virtual_batch_size=k, dtype=D)
    ref = torch.nn.BatchNorm2d(3, dtype=D)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 2)
        ghost.bias.uniform_(-1, 1)
    ref.load_state_dict(ghost.state_dict())
    x = (torch.randn(n, 3, 2, 3, dtype=D) * 3 + 1).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y = ghost(x)
    want = torch.cat([ref(chunk) for chunk in xr.split(k)])  # running stats updated in order
    torch.testing.assert_close(y, want)
    dy = torch.randn_like(y)
    y.backward(dy)
    want.backward(dy)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(ghost.weight.grad, ref.weight.grad)
    for key, v in ref.state_dict().items():
        torch.testing.assert_close(ghost.state_dict()[key], v, msg=key)
    ghost.eval()
    ref.eval()
    torch.testing.assert_close(ghost(x.detach()), ref(x.detach()))


def _limits(r_max, d_max, warmup, seen):
    """The warm-up ramp written out: (1, 0) -> (r_max, d_max) over ``warmup`` batches."""
    t = min(1.0, seen / warmup) if warmup else 1.0
    return 1.0 + (r_max - 1.0) * t, d_max * t


def _renorm_chunk_by_chunk(x, rm, rv, w, b, eps, momentum, r_max, d_max, warmup, k):
    """Ioffe 2017's formula on each chunk of ``k`` samples of an (N, C, L) input, in order: the
    limits from the chunks seen before, r and d from the running statistics as they stand,
    which each chunk then moves (unbiased variance)."""
    outs = []
    for seen, chunk in enumerate(x.split(k)):
        outs.append(_renorm_formula(chunk, rm, rv, w, b, eps, *_limits(r_max, d_max, warmup,
                                                                         seen)))
        var, mean = torch.var_mean(chunk.detach(), (0, 2), correction=1)
        rm, rv = (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * var
    return torch.cat(outs), rm, rv


# (N, k, L, channel_axis): even and uneven chunks, primes, one sample per chunk, the whole
# batch in one chunk (N == k, N < k), channels last
GHOST_RENORM_CASES = [(12, 4, 3, 1), (10, 4, 5, 1), (7, 3, 2, -1), (13, 1, 3, 1), (5, 5, 3, 1),
                      (3, 8, 2, 1), (10, 4, 1, -1)]


@pytest.mark.parametrize("n,k,length,axis", GHOST_RENORM_CASES)
def test_batch_renorm_over_ghost_batches_is_renorm_of_each_chunk(n, k, length, axis):
    torch.manual_seed(0)
    c, momentum, r_max, d_max, warmup = 5, 0.3, 2.0, 0.5, 3
    m = nl.BatchRenorm(c, momentum=momentum, r_max=r_max, d_max=d_max, warmup_steps=warmup,
                       virtual_batch_size=k, channel_axis=axis, dtype=D)
    with torch.no_grad():
        m.running_mean.copy_(torch.linspace(-1, 1, c))
        m.running_var.copy_(torch.linspace(0.5, 3, c))
        m.weight.uniform_(0.5, 2)
        m.bias.uniform_(-1, 1)
    rm0, rv0 = m.running_mean.clone(), m.running_var.clone()
    x = torch.randn(n, c, length, dtype=D) * torch.linspace(0.5, 4, c).view(1, c, 1) + 1
    if axis == -1:
        x = x.transpose(1, 2).contiguous()  # N, L, C
    x.requires_grad_()
    xo = x.detach().clone().requires_grad_()
    wo, bo = m.weight.detach().clone().requires_grad_(), m.bias.detach().clone().requires_grad_()
    y = m(x)
    xo_ncl = xo if axis == 1 else xo.transpose(1, 2)
    want, rm, rv = _renorm_chunk_by_chunk(xo_ncl, rm0, rv0, wo, bo, m.eps, momentum, r_max,
                                          d_max, warmup, k)
    want = want if axis == 1 else want.transpose(1, 2)
    torch.testing.assert_close(y, want)
    dy = torch.randn_like(y)
    y.backward(dy)
    want.backward(dy)
    for got, ref, name in ((x.grad, xo.grad, "x"), (m.weight.grad, wo.grad, "weight"),
                           (m.bias.grad, bo.grad, "bias")):
        torch.testing.assert_close(got, ref, msg=name)
    torch.testing.assert_close(m.running_mean, rm)
    torch.testing.assert_close(m.running_var, rv)
    assert m.num_batches_tracked.item() == -(-n // k)  # one per chunk
    m.eval()  # eval: batch norm with the running statistics, no chunks
    torch.testing.assert_close(
        m(x.detach()), F.batch_norm(x.detach(), m.running_mean, m.running_var, m.weight,
                                    m.bias, False, channel_axis=axis))


@pytest.mark.parametrize("n,k", [(12, 4), (10, 3)])
def test_batch_renorm_over_ghost_batches_without_limits_is_ghost_batch_norm(n, k):
    """With r_max=1, d_max=0 renorm is batch norm, chunk by chunk: torch.nn.BatchNorm1d on
    each chunk in order (and normlab's GhostBatchNorm), running statistics included."""
    torch.manual_seed(1)
    m = nl.BatchRenorm1d(3, momentum=0.1, r_max=1.0, d_max=0.0, virtual_batch_size=k, dtype=D)
    ref, ghost = torch.nn.BatchNorm1d(3, dtype=D), nl.GhostBatchNorm1d(3, k, dtype=D)
    x = torch.randn(n, 3, 4, dtype=D) * 2 - 1
    for _ in range(2):
        y = m(x)
        torch.testing.assert_close(y, torch.cat([ref(chunk) for chunk in x.split(k)]))
        torch.testing.assert_close(y, ghost(x))
    for key, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[key], v, msg=key)
        torch.testing.assert_close(ghost.state_dict()[key], v, msg=key)


def test_batch_renorm_over_ghost_batches_edges():
    m = nl.BatchRenorm1d(3, virtual_batch_size=2)
    assert "virtual_batch_size=2" in repr(m) and "virtual_batch_size" not in repr(
        nl.BatchRenorm1d(3))
    assert normlab.create_norm_layer("renorm", 3, virtual_batch_size=2).virtual_batch_size == 2
    whole = nl.BatchRenorm1d(3)
    for layer in (m, whole):  # an empty batch: an empty output, nothing counted or moved
        assert layer(torch.randn(0, 3, 4)).shape == (0, 3, 4)
        assert layer.num_batches_tracked.item() == 0
        assert torch.equal(layer.running_mean, torch.zeros(3))
    with pytest.raises(ValueError, match=r"^residual must have the input's shape \(6, 3\), "
                                         r"got \(5, 3\)$"):
        m(torch.randn(6, 3), residual=torch.randn(5, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        m(torch.randn(5, 3))  # the last chunk is one sample without positions


def test_frozen_batch_norm_is_fixed_affine():
    bn = torch.nn.BatchNorm2d(3, dtype=D)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0, 1.0]))
    frozen = nl.FrozenBatchNorm2d(3, dtype=D)
    frozen.load_state_dict(bn.state_dict())
    assert list(frozen.parameters()) == []
    x = torch.randn(4, 3, 2, 2, dtype=D, requires_grad=True)
    frozen.train()  # still the running statistics
    y = frozen(x)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    want = (x - bn.running_mean.view(1, 3, 1, 1)) * scale.view(1, 3, 1, 1) \
        + bn.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(y, want)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, scale.detach().view(1, 3, 1, 1).expand_as(x))


def test_freeze_convert_and_fold_frozen():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1),
                                nl.BatchNorm2d(4, activation="relu"),
                                torch.nn.BatchNorm2d(4, track_running_stats=False))
    for _ in range(3):
        model(torch.randn(5, 3, 5, 5) + 1)
    snapshot = copy.deepcopy(model.state_dict())
    frozen, report = freeze_batch_norm(model, return_report=True)
    assert report.left == [("5", "BatchNorm2d", "no running statistics to freeze")]
    assert isinstance(frozen[1], nl.FrozenBatchNorm) and frozen[4].activation == "relu"
    assert isinstance(frozen[5], torch.nn.BatchNorm2d)  # no running stats: kept
    x = torch.randn(2, 3, 5, 5)
    ref = copy.deepcopy(model).eval()
    frozen.train()
    ref[5].train()  # the kept layer behaves the same in both
    torch.testing.assert_close(frozen(x), ref(x))
    folded, report = fold_batch_norm(frozen)
    assert [bn for _, bn in report.folded] == ["1", "4"]
    sync = convert_sync_batchnorm(model)
    assert [type(m).__name__ for m in sync if "BatchNorm" in type(m).__name__] == \
        ["SyncBatchNorm", "SyncBatchNorm", "SyncBatchNorm"]
    assert sync[4].activation == "relu" and sync[5].running_mean is None
    model.eval()
    sync.eval()
    torch.testing.assert_close(sync(x), model(x))
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


def test_registry_has_the_remedies():
    assert isinstance(normlab.create_norm_layer("renorm", 8), nl.BatchRenorm)
    assert normlab.create_norm_layer("ghost", 8, virtual_batch_size=4).virtual_batch_size == 4
    assert isinstance(normlab.create_norm_layer("frozen", 8), nl.FrozenBatchNorm)
    assert isinstance(normlab.create_norm_layer("sync", 8), nl.SyncBatchNorm)
