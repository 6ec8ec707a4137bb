"""Model surgery on architectures defined here (no torchvision): a ResNet-18-like CNN, a small
transformer block, a UNet-like block with GroupNorm, an MLP."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import normlab.nn as nl
from normlab.surgery import (
    Passthrough,
    SurgeryError,
    SurgeryWarning,
    fold_batch_norm,
    insert_norms,
    is_norm,
    remove_norms,
    swap_norms,
    to_normlab,
)

# --------------------------------------------------------------------------------------------
# architectures


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNetLike(nn.Module):
    def __init__(self, width=8, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width),
                                    BasicBlock(width, 2 * width, 2), BasicBlock(2 * width,
                                                                                2 * width))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


class TransformerBlock(nn.Module):
    def __init__(self, d=16, heads=2):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class UNetBlock(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.GroupNorm(4, c), nn.SiLU())
        self.mid = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1), nn.GroupNorm(4, 2 * c),
                                 nn.SiLU())
        self.up = nn.ConvTranspose2d(2 * c, c, 2, 2)
        self.out = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.GroupNorm(2, c),
                                 nn.SiLU(), nn.Conv2d(c, 3, 1))

    def forward(self, x):
        d = self.down(x)
        u = self.up(self.mid(d))
        return self.out(torch.cat([d, u], 1))


def mlp():
    return nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32),
                         nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))


ARCHS = {  # name -> (builder, input)
    "resnet": (ResNetLike, lambda: torch.randn(4, 3, 8, 8)),
    "transformer": (TransformerBlock, lambda: torch.randn(3, 5, 16)),
    "unet": (UNetBlock, lambda: torch.randn(2, 3, 8, 8)),
    "mlp": (mlp, lambda: torch.randn(6, 10)),
}


def _trained(name, steps=5):
    """The architecture after a few SGD steps: non-trivial running statistics and affine."""
    torch.manual_seed(0)
    build, make_x = ARCHS[name]
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x = make_x() * 2 + 0.5
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, make_x


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, \
        [type(m) for m in model.modules()], model.training


def _unchanged(model, snap):
    sd, types, training = snap
    now = model.state_dict()
    assert list(now) == list(sd) and all(torch.equal(now[k], sd[k]) for k in sd)
    assert [type(m) for m in model.modules()] == types and model.training == training


# --------------------------------------------------------------------------------------------
# to_normlab


@pytest.mark.parametrize("name", list(ARCHS))
def test_to_normlab_exact_state(name):
    model, make_x = _trained(name)
    snap = _snapshot(model)
    new = to_normlab(model)
    _unchanged(model, snap)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d))
                   for m in new.modules())
    assert sum(is_norm(m) for m in new.modules()) == sum(is_norm(m) for m in model.modules())
    assert list(new.state_dict()) == list(model.state_dict())
    x = make_x()
    for mode in ("train", "eval"):
        a, b = copy.deepcopy(model), copy.deepcopy(new)
        getattr(a, mode)()
        getattr(b, mode)()
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(vb, va, rtol=0, atol=0, msg=k)  # running stats too


def test_to_normlab_keeps_eval_mode_per_layer():
    model = mlp()
    model[1].eval()
    new = to_normlab(model)
    assert isinstance(new[1], nl.BatchNorm1d) and not new[1].training and new[4].training


# --------------------------------------------------------------------------------------------
# swap_norms


def test_swap_batch_to_group_and_back_carries_affine():
    model, make_x = _trained("resnet")
    snap = _snapshot(model)
    g = swap_norms(model, "group", num_groups=4)
    _unchanged(model, snap)
    gns = [m for m in g.modules() if isinstance(m, nl.GroupNorm)]
    assert len(gns) == 10 and all(m.num_groups == 4 for m in gns)
    torch.testing.assert_close(g.stem[1].weight, model.stem[1].weight)
    back = swap_norms(g, "batch")
    assert all(isinstance(m, nl.BatchNorm) for m in back.modules() if is_norm(m))
    torch.testing.assert_close(back.layers[2].bn2.bias, model.layers[2].bn2.bias)
    assert back(make_x()).shape == (4, 5)


def test_swap_to_batch_keeps_exact_outputs_and_running_stats():
    model, make_x = _trained("mlp")
    new = swap_norms(model, "batch")
    x = make_x()
    for mode in ("eval", "train"):
        a, b = copy.deepcopy(model), copy.deepcopy(new)
        getattr(a, mode)()
        getattr(b, mode)()
        torch.testing.assert_close(b(x), a(x))


def test_swap_transformer_layer_norm_to_rms_and_batch_on_the_channel_axis():
    model, make_x = _trained("transformer")
    x = make_x()
    rms = swap_norms(model, "rms")
    assert isinstance(rms.ln1, nl.RMSNorm) and rms.ln1.channel_axis == -1
    ref = copy.deepcopy(model)
    ref.ln1 = nn.RMSNorm(16)
    ref.ln2 = nn.RMSNorm(16)
    with torch.no_grad():
        ref.ln1.weight.copy_(model.ln1.weight)
        ref.ln2.weight.copy_(model.ln2.weight)
    torch.testing.assert_close(rms(x), ref(x))
    bn = swap_norms(model, "batch", filter=lambda path, m: path == "ln2")
    assert isinstance(bn.ln1, nn.LayerNorm) and isinstance(bn.ln2, nl.BatchNorm)
    assert bn.ln2.channel_axis == -1 and bn(x).shape == x.shape


def test_swap_errors_name_the_layer():
    model, _ = _trained("resnet")
    with pytest.raises(SurgeryError, match=r"cannot replace layer 'stem.1' \(BatchNorm2d\(8.*"
                                           r"by 'group': num_groups must divide the number of "
                                           r"channels: num_groups=3 does not divide "
                                           r"num_channels=8"):
        swap_norms(model, "group", num_groups=3)
    with pytest.raises(SurgeryError, match=r"'none', 'batch'"):
        swap_norms(model, "renormx")
    block = nn.Sequential(nn.LayerNorm((4, 5)))
    with pytest.raises(SurgeryError, match=r"layer '0' .* normalizes over \(4, 5\)"):
        swap_norms(block, "batch")


def test_remove_norms():
    model, make_x = _trained("unet")
    snap = _snapshot(model)
    bare = remove_norms(model)
    _unchanged(model, snap)
    assert not any(is_norm(m) for m in bare.modules())
    ref = copy.deepcopy(model)
    for seq in (ref.down, ref.mid, ref.out):
        seq[1] = nn.Identity()
    x = make_x()
    torch.testing.assert_close(bare(x), ref(x))
    fused = remove_norms(nn.Sequential(nl.BatchNorm1d(4, activation="relu")))
    assert isinstance(fused[0], Passthrough) and fused[0].activation == "relu"
    assert (fused(torch.randn(3, 4)) >= 0).all()


# --------------------------------------------------------------------------------------------
# insert_norms


def test_insert_before_and_after_activation():
    plain = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(),
                          nn.Linear(16, 3))
    snap = _snapshot(plain)
    before, rep = insert_norms(plain, "batch")
    _unchanged(plain, snap)
    kinds = [type(m).__name__ for m in before]
    assert kinds == ["Linear", "BatchNorm", "ReLU", "Linear", "BatchNorm", "Tanh", "Linear"]
    assert [w for w, _, _ in rep.inserted] == ["0_norm", "2_norm"]
    assert "BatchNorm(32" in rep.inserted[0][1] and rep.inserted[0][2] == "0"
    after, rep = insert_norms(plain, "layer", placement="after_activation")
    assert [type(m).__name__ for m in after] == ["Linear", "ReLU", "LayerNorm", "Linear",
                                                 "Tanh", "LayerNorm", "Linear"]
    x = torch.randn(5, 10)
    h = torch.relu(plain[0](x))
    torch.testing.assert_close(after[2](h), nn.functional.layer_norm(h, (32,)))
    assert after(x).shape == (5, 3)


def test_insert_in_nested_conv_sequentials_and_skip_existing():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU()))
    new, rep = insert_norms(model, "group", num_groups=2)
    assert isinstance(new[0][1], nl.GroupNorm) and new[0][1].channel_axis == 1
    assert len(new[1]) == 3 and rep.skipped == [("1.0", "already followed by a norm")]
    assert new(torch.randn(2, 3, 9, 9)).shape == (2, 8, 5, 5)
    with pytest.raises(SurgeryError, match="placement must be"):
        insert_norms(model, "batch", placement="middle")
    with pytest.raises(SurgeryError, match=r"cannot insert 'group' after layer '0.0'"):
        insert_norms(model, "group", num_groups=3)


# --------------------------------------------------------------------------------------------
# fold_batch_norm


def _assert_folded_equal(model, folded, x):
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        a, b = ref(x), folded(x)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


@pytest.mark.parametrize("name", ["resnet", "mlp"])
def test_fold_matches_eval_outputs(name):
    model, make_x = _trained(name, steps=8)
    snap = _snapshot(model)
    folded, report = fold_batch_norm(model)
    _unchanged(model, snap)
    assert report.method == "fx" and not folded.training
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert len(report.folded) == n_bn and report.not_folded == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    _assert_folded_equal(model, folded, make_x())


def test_fold_normlab_layers_conv_transpose_and_fused_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 2, 2, groups=2), nl.BatchNorm2d(6),
                          nn.Conv2d(6, 6, 3, groups=3), nl.BatchNorm2d(6, activation="relu"),
                          nn.Flatten(), nn.Linear(6 * 6 * 6, 5), nl.BatchNorm1d(5))
    model.train()
    for _ in range(4):
        model(torch.randn(8, 4, 4, 4) * 3 + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nl.BatchNorm):
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    folded, report = fold_batch_norm(model)
    assert [bn for _, bn in report.folded] == ["1", "3", "6"]
    assert isinstance(folded.get_submodule("3"), Passthrough)
    _assert_folded_equal(model, folded, torch.randn(3, 4, 4, 4))


def test_fold_reports_what_it_cannot_fold():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.bn_free = nn.BatchNorm2d(4, track_running_stats=False)
            self.bn_axis = nl.BatchNorm(4, channel_axis=-1)
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            h = self.conv(x)
            return self.bn(h) + h.mean() + self.bn_free(h).mean() \
                + self.bn_axis(self.lin(h.permute(0, 2, 3, 1))).mean()

    torch.manual_seed(0)
    model = Branchy()
    folded, report = fold_batch_norm(model)
    reasons = dict(report.not_folded)
    assert reasons["bn"] == "the output of conv is used elsewhere too"
    assert reasons["bn_free"].startswith("no running statistics")
    assert report.folded == [("lin", "bn_axis")]
    _assert_folded_equal(model, folded, torch.randn(2, 3, 6, 6))


def test_fold_falls_back_to_sequential_when_tracing_fails():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            self.other = nn.BatchNorm2d(4)

        def forward(self, x):
            h = self.body(x)
            if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                h = h * 2
            return self.other(h)

    torch.manual_seed(0)
    model = Untraceable()
    for _ in range(3):
        model(torch.randn(4, 3, 6, 6) + 1)
    folded, report = fold_batch_norm(model)
    assert report.method == "sequential" and "TraceError" in report.trace_error
    assert report.folded == [("body.0", "body.1")]
    assert report.not_folded[0][0] == "other"
    _assert_folded_equal(model, folded, torch.randn(2, 3, 6, 6) + 1)
    assert "used the Sequential fallback" in str(report)


# --------------------------------------------------------------------------------------------
# the adapter table: user classes, the structural fallback, probes


class MyRMSNorm(nn.Module):  # an RMSNorm written the way model code often writes one
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.variance_epsilon = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)
                                             + self.variance_epsilon)


class ScaleNorm(nn.Module):  # named like a norm, but not one
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * x / (x.norm(dim=-1, keepdim=True) + self.eps)


def test_structural_fallback_accepts_an_rms_norm_only_after_a_probe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), MyRMSNorm(8), nn.Linear(8, 8), ScaleNorm(8))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2)
    new, report = to_normlab(model, return_report=True)
    assert type(new[1]) is nl.RMSNorm and new[1].eps == 1e-6
    assert "structural: computes rms norm over the last axis" in report.changed[0][2]
    assert type(new[3]) is ScaleNorm
    assert report.left == [("3", "ScaleNorm", "ScaleNorm (tests.test_surgery) is not in the "
                            "adapter table and no probe shows it computes an RMS or layer norm")]
    x = torch.randn(4, 8, dtype=torch.float64)
    a, b = copy.deepcopy(model).double(), copy.deepcopy(new).double()
    torch.testing.assert_close(b(x), a(x), rtol=1e-12, atol=1e-12)


def test_register_adapter_and_a_wrong_adapter_is_caught_by_the_probe():
    from normlab.surgery import NormInfo, register_adapter

    class Mine(MyRMSNorm):
        pass

    class Lying(MyRMSNorm):
        pass

    register_adapter(Mine, lambda m: NormInfo("rms", normalized_shape=tuple(m.weight.shape),
                                              eps=m.variance_epsilon, weight=m.weight,
                                              channel_axis=-1))
    register_adapter(Lying, lambda m: NormInfo("layer", normalized_shape=tuple(m.weight.shape),
                                               eps=m.variance_epsilon, weight=m.weight,
                                               channel_axis=-1))
    new, report = to_normlab(nn.Sequential(Mine(6), Lying(6)), return_report=True)
    assert type(new[0]) is nl.RMSNorm and type(new[1]) is Lying
    assert report.left[0][0] == "1"
    assert re.match(r"the twin's eval output differs on a probe \(scale 1\): relative error "
                    r"\S+ > 1e-10", report.left[0][2])
    with pytest.raises(TypeError, match=r"cls must be a class or a 'module:qualname' string"):
        register_adapter(3, lambda m: None)
    with pytest.raises(TypeError, match=r"read must be callable"):
        register_adapter(Mine, None)


def test_swap_and_fold_report_what_they_leave():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), ScaleNorm(4), nn.BatchNorm2d(4))
    new, report = swap_norms(model, "group", num_groups=2, return_report=True)
    assert type(new[1]) is ScaleNorm and type(new[2]) is nl.GroupNorm
    assert [p for p, _, _ in report.left] == ["1"]
    with pytest.warns(SurgeryWarning, match="swap_norms left 1 layer"):
        swap_norms(model, "group", num_groups=2)
    _, rep = fold_batch_norm(model)
    assert rep.folded == [] and rep.not_folded == [
        ("2", "its input is the output of 1 (ScaleNorm), not a Conv, ConvTranspose or Linear "
              "layer")]


def test_fold_leaves_a_batch_norm_after_an_activation():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    _, rep = fold_batch_norm(model)
    assert rep.not_folded == [("2", "its input is the output of 1 (ReLU), not a Conv, "
                                    "ConvTranspose or Linear layer")]


def test_to_normlab_example_inputs_checks_the_whole_model():
    model, make_x = _trained("resnet")
    new = to_normlab(model, example_inputs=make_x())
    assert not any(type(m) is nn.BatchNorm2d for m in new.modules())


def test_importing_normlab_imports_no_model_zoo_library():
    code = ("import sys, normlab, normlab.surgery; "
            "print(sorted(m for m in ('timm', 'torchvision', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
