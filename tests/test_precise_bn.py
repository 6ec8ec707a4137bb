"""precise_batch_norm against torch.optim.swa_utils.update_bn (equal-size batches: the same
equal-weight average) and against statistics computed directly in float64 over the data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from normlab import nn as nl
from normlab.surgery import precise_batch_norm
from tests.oracle import tol


def _trained(model, x, steps=5, lr=0.5):
    """A few SGD steps, so that the running statistics are an EMA of moving weights (far from
    the final network's population statistics)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for i in range(steps):
        out = model(x[i::steps])
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _cnn(bn1, bn2, dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), bn1, nn.ReLU(), nn.Conv2d(8, 6, 3), bn2,
                         nn.ReLU(), nn.Flatten()).to(dtype)


def _batches(x, sizes):
    out, pos = [], 0
    for s in sizes:
        out.append((x[pos:pos + s], torch.zeros(s)))
        pos += s
    return out


def _bns(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            or type(m).__name__.startswith(("BatchNorm", "GhostBatchNorm", "BatchRenorm"))]


@pytest.mark.parametrize("normlab_layers", [False, True], ids=["torch.nn", "normlab"])
def test_equal_batches_agree_with_swa_update_bn(normlab_layers):
    x = torch.randn(60, 3, 9, 7, dtype=torch.float64)
    model = _trained(_cnn(nn.BatchNorm2d(8), nn.BatchNorm2d(6)), x)
    loader = _batches(x, [12] * 5)
    ref = copy.deepcopy(model)
    update_bn(loader, ref)  # in place, cumulative average (momentum=None); torch.nn's only
    if normlab_layers:  # the same network with normlab's batch norms (same state dict)
        twin = _cnn(nl.BatchNorm2d(8), nl.BatchNorm2d(6))
        twin.load_state_dict(model.state_dict())
        model = twin
    new = precise_batch_norm(model, loader)
    assert all(type(m).__module__.startswith("normlab") == normlab_layers for m in _bns(new))
    for a, b, orig in zip(_bns(new), _bns(ref), _bns(model), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean, **tol(torch.float64))
        torch.testing.assert_close(a.running_var, b.running_var, **tol(torch.float64))
        assert not torch.allclose(a.running_var, orig.running_var, rtol=1e-3)  # it moved


def test_first_layer_matches_float64_statistics_of_the_data():
    x = torch.randn(50, 3, 9, 7, dtype=torch.float64) * 3 + 1
    model = _trained(_cnn(nn.BatchNorm2d(8), nn.BatchNorm2d(6)), x)
    conv = model[0]
    with torch.no_grad():
        feats = conv(x)  # N, 8, 7, 5: the first batch norm's input in every pass
    # one batch holding everything: the dataset's own mean and unbiased variance
    whole = precise_batch_norm(model, [x])
    values = feats.transpose(0, 1).reshape(8, -1)
    torch.testing.assert_close(whole[1].running_mean, values.mean(1), **tol(torch.float64))
    torch.testing.assert_close(whole[1].running_var, values.var(1, unbiased=True),
                               **tol(torch.float64))
    # unequal batches: the mean is still the dataset's (each batch weighted by its size); the
    # variance is the size-weighted mean of the batches' unbiased variances
    sizes = [7, 20, 3, 13, 7]
    new = precise_batch_norm(model, _batches(x, sizes))
    torch.testing.assert_close(new[1].running_mean, values.mean(1), **tol(torch.float64))
    pos, acc = 0, torch.zeros(8, dtype=torch.float64)
    for s in sizes:
        v = feats[pos:pos + s].transpose(0, 1).reshape(8, -1)
        acc += v.var(1, unbiased=True) * v.shape[1]
        pos += s
    torch.testing.assert_close(new[1].running_var, acc / values.shape[1], **tol(torch.float64))
    # where update_bn differs: it weights every batch the same, so its mean is not the data's
    ref = copy.deepcopy(model)
    update_bn(_batches(x, sizes), ref)
    assert (ref[1].running_mean - values.mean(1)).abs().max() > 1e-6


def test_input_untouched_modes_momentum_and_counter_kept():
    x = torch.randn(40, 3, 9, 7, dtype=torch.float64)
    model = _trained(_cnn(nn.BatchNorm2d(8, momentum=None), nl.BatchNorm2d(6, momentum=0.3)), x)
    model.eval()
    model[4].train()  # a mixed state must come back as it was
    before = copy.deepcopy(model.state_dict())
    new, report = precise_batch_norm(model, _batches(x, [10] * 4), return_report=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in new.modules()] == [m.training for m in model.modules()]
    assert new[1].momentum is None and new[4].momentum == 0.3
    assert torch.equal(new[1].num_batches_tracked, model[1].num_batches_tracked)
    assert torch.equal(new[4].num_batches_tracked, model[4].num_batches_tracked)
    assert report.updated == ["1", "4"] and report.samples == 40 and report.batches == 4


def test_num_samples_takes_whole_batches_until_reached():
    x = torch.randn(40, 3, 9, 7, dtype=torch.float64)
    model = _trained(_cnn(nn.BatchNorm2d(8), nn.BatchNorm2d(6)), x)
    loader = _batches(x, [8] * 5)
    a, report = precise_batch_norm(model, loader, num_samples=20, return_report=True)
    b = precise_batch_norm(model, loader[:3])  # 24 >= 20 samples: three batches
    assert report.samples == 24 and report.batches == 3
    for ma, mb in zip(_bns(a), _bns(b), strict=True):
        torch.testing.assert_close(ma.running_var, mb.running_var, **tol(torch.float64))
    c = precise_batch_norm(model, loader)
    assert not torch.allclose(a[1].running_var, c[1].running_var, rtol=1e-6)


def test_channels_last_normlab_and_empty_batches():
    x = torch.randn(30, 11, dtype=torch.float64)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(11, 5), nl.BatchNorm1d(5), nn.ReLU()).double()
    ref = nn.Sequential(nn.Linear(11, 5), nn.BatchNorm1d(5), nn.ReLU()).double()
    ref.load_state_dict(model.state_dict())
    loader = [x[:10], x[10:10], x[10:20], x[20:30]]  # an empty batch is skipped
    new = precise_batch_norm(model, loader)
    update_bn([x[:10], x[10:20], x[20:30]], ref)
    torch.testing.assert_close(new[1].running_var, ref[1].running_var, **tol(torch.float64))
    # channel axis -1 on (N, L, C) input
    seq = torch.randn(6, 13, 4, dtype=torch.float64)
    bn = nl.BatchNorm(4, channel_axis=-1).double()
    out = precise_batch_norm(bn, [seq[:3], seq[3:]])
    vals = seq.reshape(-1, 4)
    torch.testing.assert_close(out.running_mean, vals.mean(0), **tol(torch.float64))
    expect = (seq[:3].reshape(-1, 4).var(0) + seq[3:].reshape(-1, 4).var(0)) / 2
    torch.testing.assert_close(out.running_var, expect, **tol(torch.float64))


def test_ghost_and_renorm_layers_and_no_running_stats():
    x = torch.randn(32, 6, dtype=torch.float64) * 2 - 1
    torch.manual_seed(2)
    for layer in (nl.GhostBatchNorm1d(6, virtual_batch_size=4),
                  nl.BatchRenorm1d(6, virtual_batch_size=4, warmup_steps=3)):
        model = nn.Sequential(layer.double(), nn.Linear(6, 2).double())
        _trained(model, x, steps=4, lr=0.1)
        new = precise_batch_norm(model, [x[:16], x[16:]])
        expect = (x[:16].var(0) + x[16:].var(0)) / 2
        torch.testing.assert_close(new[0].running_mean, x.mean(0), **tol(torch.float64))
        torch.testing.assert_close(new[0].running_var, expect, **tol(torch.float64))
        assert torch.equal(new[0].num_batches_tracked, model[0].num_batches_tracked)
    plain = nn.Sequential(nn.BatchNorm1d(6, track_running_stats=False))
    same, report = precise_batch_norm(plain, [x.float()], return_report=True)
    assert report.updated == [] and "no running statistics" in report.left[0][2]


def test_timm_batchnormact_agrees_with_update_bn():
    try:  # timm imports torchvision, which needs the tests' tolerant import on a CPU torch
        from tests.zoo import _import_torchvision

        _import_torchvision()
        from timm.layers import norm_act as timm_norm_act
    except ImportError:
        pytest.skip("timm is not installed (the zoo extra)")
    x = torch.randn(24, 3, 8, 8, dtype=torch.float64)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), timm_norm_act.BatchNormAct2d(4),
                          nn.Conv2d(4, 4, 3), timm_norm_act.BatchNormAct2d(4)).double()
    _trained(model, x, steps=3)
    ref = copy.deepcopy(model)
    loader = _batches(x, [6] * 4)
    update_bn(loader, ref)
    new = precise_batch_norm(model, loader)
    for i in (1, 3):
        torch.testing.assert_close(new[i].running_mean, ref[i].running_mean,
                                   **tol(torch.float64))
        torch.testing.assert_close(new[i].running_var, ref[i].running_var,
                                   **tol(torch.float64))


@pytest.mark.parametrize("kwargs, err, message", [
    ({"num_samples": 0}, ValueError, "num_samples: expected a positive integer or None, got 0"),
    ({"num_samples": 2.5}, ValueError, "num_samples: expected a positive integer"),
    ({"loader": [{"x": 1}]}, TypeError, "loader: expected each item to be a tensor"),
    ({"model": "resnet"}, TypeError, "model: expected a torch.nn.Module, got str"),
    ({"loader": [torch.randn(1, 4)]}, ValueError, "one value per channel"),
])
def test_bad_input(kwargs, err, message):
    args = {"model": nn.Sequential(nn.BatchNorm1d(4)), "loader": [torch.randn(5, 4)],
            **kwargs}
    with pytest.raises(err, match=message):
        precise_batch_norm(args.pop("model"), args.pop("loader"), **args)
