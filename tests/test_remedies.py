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
    frozen = freeze_batch_norm(model)
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
