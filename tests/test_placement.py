"""``surgery.move_norms`` on models defined here: each moved model is compared, in float64, eval
and train mode, with the same network written out by hand with the activation before the norm
(torch.nn.functional on the original model's own tensors), never with the surgery's output.
Real timm/torchvision models: tests/test_zoo.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import normlab.nn as nl
from normlab.surgery import ActThenNorm, NormAct, SurgeryError, move_norms, remove_norms

RTOL = 1e-10


def _bn(bn: nn.Module, x, training):
    """Batch norm by torch.nn.functional with ``bn``'s tensors (a fresh copy of its running
    statistics: the caller's model is not touched)."""
    rm = None if bn.running_mean is None else bn.running_mean.clone()
    rv = None if bn.running_var is None else bn.running_var.clone()
    return F.batch_norm(x, rm, rv, bn.weight, bn.bias, training, 0.1, bn.eps)


def _close(a, b):
    err = (a - b).abs().max().item() / max(a.abs().max().item(), 1e-300)
    assert err <= RTOL, err


def _randomize(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nl.BatchNorm):
                m.weight.copy_(0.7 + 0.6 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.4 * torch.rand(m.bias.shape, generator=g) - 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.double()


def _both_modes(model, oracle, x):
    for training in (False, True):
        got = copy.deepcopy(model).train(training)(x)
        _close(oracle(x, training), got)


# --------------------------------------------------------------------------------------------
# networks


class SharedRelu(nn.Module):
    """torchvision's ResNet block shape: one ReLU module after the first norm and after the
    residual add."""

    def __init__(self, c=6):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


def shared_oracle(m, x, training):
    out = _bn(m.bn1, F.relu(m.conv1(x)), training)
    out = _bn(m.bn2, m.conv2(out), training)
    return F.relu(out + x)


class OwnActs(nn.Module):
    """Each norm with an activation module of its own (timm's ResNet shape: bn1 -> drop_block
    (Identity) -> act1), an in-place one, whose conv output the skip also reads."""

    def __init__(self, c=6):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.drop_block = nn.Identity()
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 1)
        self.bn2 = nn.BatchNorm2d(c)
        self.act2 = nn.GELU()

    def forward(self, x):
        h = self.conv1(x)
        y = self.act1(self.drop_block(self.bn1(h)))
        y = self.act2(self.bn2(self.conv2(y)))
        return y + h


def own_oracle(m, x, training):
    h = m.conv1(x)
    y = _bn(m.bn1, F.relu(h), training)
    y = _bn(m.bn2, F.gelu(m.conv2(y)), training)
    return y + h


class Functional(nn.Module):
    """Activations as functions and tensor methods."""

    def __init__(self, c=6):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
        x = self.bn2(self.conv2(x)).relu()
        return self.bn3(self.conv3(x))  # no activation after: left


def functional_oracle(m, x, training):
    x = _bn(m.bn1, F.leaky_relu(m.conv1(x), 0.2), training)
    x = _bn(m.bn2, F.relu(m.conv2(x)), training)
    return _bn(m.bn3, m.conv3(x), training)


class Untraceable(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it) around a Sequential."""

    def __init__(self, c=6):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU(),
                                  nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.body(x)
        return y if y.sum() > -1e30 else -y


def untraceable_oracle(m, x, training):
    b = m.body
    y = _bn(b[1], F.silu(b[0](x)), training)
    return _bn(b[4], b[3](y), training)


X = torch.randn(3, 6, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# the moves


def test_a_shared_activation_is_moved_in_a_traced_copy():
    model = _randomize(SharedRelu())
    before = copy.deepcopy(model.state_dict())
    new, report = move_norms(model, example_inputs=X)
    assert isinstance(new, fx.GraphModule) and report.method == "fx"
    assert [p for p, _ in report.moved] == ["bn1"]
    assert report.left == [("bn2", "BatchNorm2d", "followed by add(), not an activation")]
    _both_modes(new, lambda x, t: shared_oracle(model, x, t), X)
    # the input model is untouched: its state and its own forward (norm, then ReLU)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ref = F.relu(_bn(model.bn1, model.conv1(X), False))
    _close(F.relu(_bn(model.bn2, model.conv2(ref), False) + X), model.eval()(X))


def test_activations_of_their_own_are_moved_in_the_models_own_class():
    model = _randomize(OwnActs())
    new, report = move_norms(model, example_inputs=X)
    assert type(new) is OwnActs and report.method == "module"
    assert sorted(report.moved) == [("bn1", "act1 (ReLU)"), ("bn2", "act2 (GELU)")]
    assert isinstance(new.bn1, ActThenNorm) and isinstance(new.act1, nn.Identity)
    assert new.bn1.act.inplace is False  # in place it would overwrite h, which the skip reads
    _both_modes(new, lambda x, t: own_oracle(model, x, t), X)
    # the state dict keeps its keys: the original's loads into the moved model and back
    assert list(new.state_dict()) == list(model.state_dict())
    new.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(new.state_dict(), strict=True)


def test_functions_and_tensor_methods_are_activations_too():
    model = _randomize(Functional())
    new, report = move_norms(model, example_inputs=X)
    assert report.method == "fx"
    assert dict(report.moved) == {"bn1": "leaky_relu() (a function)",
                                  "bn2": "relu() (a tensor method)"}
    assert [p for p, _, _ in report.left] == ["bn3"]
    assert "the model's output, not an activation" in report.left[0][2]
    assert new.bn1.act.negative_slope == 0.2
    _both_modes(new, lambda x, t: functional_oracle(model, x, t), X)


def test_an_untraceable_model_is_traced_in_parts():
    model = _randomize(Untraceable())
    new, report = move_norms(model, example_inputs=X)
    assert type(new) is Untraceable and report.method == "submodules"
    assert "TraceError" in report.trace_error or "symbolically traced" in report.trace_error
    assert report.moved == [("body.1", "body.2 (SiLU)")]
    assert [p for p, _, _ in report.left] == ["body.4"]
    assert "the model's output" in report.left[0][2]  # body's output: what follows is unknown
    _both_modes(new, lambda x, t: untraceable_oracle(model, x, t), X)


class _Inner(nn.Module):
    """Untraceable (data-dependent control flow), holding a (norm, activation) pair in its own
    forward (not a Sequential) and a SharedAct's activation."""

    def __init__(self, c=6, shared=None):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU()
        self.bn2, self.act2 = nn.BatchNorm2d(c), shared

    def forward(self, x):
        y = self.act2(self.bn2(self.act(self.bn(self.conv(x)))))
        return y if y.sum() > -1e30 else -y


def test_parts_down_to_the_sequential_fallback_and_shared_activations():
    """A Sequential that does not trace (it holds an untraceable module with norms): its own
    (norm, activation) children are moved by the Sequential rule; inside the untraceable
    module nothing traces, so its norms (not in a Sequential) are left; an activation module
    shared between two places is never edited from one of them."""
    block = nn.Sequential(nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), nn.SiLU(),
                          _Inner(shared=nn.GELU()))
    model = _randomize(_Untraceable(nn.Sequential(block, nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6),
                                                  nn.ReLU())))
    model.extra = nn.ModuleDict({"gelu": model.body[0][3].act2})  # reachable from outside too
    new, report = move_norms(model, example_inputs=X)
    assert report.method == "submodules"
    assert sorted(report.moved) == [("body.0.1", "body.0.2 (SiLU)"), ("body.2", "body.3 (ReLU)")]
    assert sorted(p for p, _, _ in report.left) == ["body.0.3.bn", "body.0.3.bn2"]
    b, s = model.body, model.body[0]

    def oracle(x, t):
        h = _bn(s[1], F.silu(s[0](x)), t)
        h = F.gelu(_bn(s[3].bn2, F.relu(_bn(s[3].bn, s[3].conv(h), t)), t))
        return _bn(b[2], F.relu(b[1](h)), t)

    _both_modes(new, oracle, X)
    # with the inner forward traceable, its own pair moves; the shared GELU stays
    _Inner.forward, orig = (lambda self, x: self.act2(self.bn2(self.act(self.bn(self.conv(x))))),
                            _Inner.forward)
    try:
        new, report = move_norms(model, example_inputs=X)
    finally:
        _Inner.forward = orig
    assert ("body.0.3.bn", "body.0.3.act (ReLU)") in report.moved
    assert dict((p, w) for p, _, w in report.left)["body.0.3.bn2"].startswith(
        "its activation body.0.3.act2 is also reachable from outside")


def test_a_fused_activation_is_split_off_and_moved():
    """normlab's fused activation and a NormAct's: act(norm(x)) becomes norm(act(x))."""
    model = nn.Sequential(nn.Conv2d(6, 6, 1), nl.BatchNorm2d(6, activation="relu"),
                          nn.Conv2d(6, 6, 1), NormAct(nl.BatchNorm2d(6), None, nn.Tanh()))
    model = _randomize(model)
    new, report = move_norms(model, example_inputs=X)
    assert [p for p, _ in report.moved] == ["1", "3"] and not report.left
    assert new[1].norm.activation is None

    def oracle(x, t):
        y = _bn(model[1], F.relu(model[0](x)), t)
        return _bn(model[3].norm, torch.tanh(model[2](y)), t)
    _both_modes(new, oracle, X)


def test_after_then_before_is_the_original_model():
    for model in (_randomize(SharedRelu()), _randomize(OwnActs()), _randomize(Functional())):
        moved, _ = move_norms(model)
        back, report = move_norms(moved, "before_activation", example_inputs=X)
        assert len(report.moved) == len(move_norms(model)[1].moved)
        for training in (False, True):
            a = copy.deepcopy(model).train(training)(X)
            b = copy.deepcopy(back).train(training)(X)
            _close(a, b)


def test_before_moves_a_norm_that_follows_its_activation():
    model = _randomize(nn.Sequential(nn.Conv2d(6, 6, 1), nn.ReLU(), nn.BatchNorm2d(6),
                                     nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), nn.ReLU()))
    new, report = move_norms(model, "before_activation", example_inputs=X)
    assert [p for p, _ in report.moved] == ["2"] and isinstance(new[2], NormAct)
    assert report.left == [] and report.already == [("4", "before 5 (ReLU)")]
    _both_modes(new, lambda x, t: F.relu(_bn(model[4], model[3](F.relu(_bn(
        model[2], model[0](x), t))), t)), X)


def test_nothing_to_move_is_reported_not_silent():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    new, report = move_norms(mlp)
    assert report.moved == [] and report.left == [
        ("1", "LayerNorm", "followed by 2 (Linear), not an activation")]
    x = torch.randn(3, 4)
    assert torch.equal(new(x), mlp(x))
    moved, _ = move_norms(_randomize(OwnActs()))
    _, again = move_norms(moved)
    assert again.moved == [] and [p for p, _ in again.already] == ["bn1", "bn2"]


def test_filter_and_bad_input():
    model = _randomize(OwnActs())
    new, report = move_norms(model, filter=lambda path, m: path == "bn2")
    assert [p for p, _ in report.moved] == ["bn2"] and isinstance(new.bn1, nn.BatchNorm2d)
    with pytest.raises(SurgeryError, match="placement must be 'after_activation' or "
                                           "'before_activation', got 'after'"):
        move_norms(model, "after")
    with pytest.raises(SurgeryError, match="filter must be a callable"):
        move_norms(model, filter="bn1")
    with pytest.raises(SurgeryError, match="got a norm layer itself"):
        move_norms(nn.BatchNorm2d(3))


def test_remove_norms_keeps_a_moved_layers_activation():
    moved, _ = move_norms(_randomize(OwnActs()))
    bare = remove_norms(moved)
    assert isinstance(bare.bn1, nn.ReLU) and isinstance(bare.bn2, nn.GELU)
    h = bare.conv1(X)
    _close(F.gelu(bare.conv2(F.relu(h))) + h, bare(X))


def test_a_model_in_eval_mode_stays_in_eval_mode_every_layer():
    """The wrappers and the Identity left where an activation was are new modules: they take
    the mode of what they replace (a fresh module is in training mode), on every path: the
    module tree, a traced copy, the Sequential fallback, a fused split, the move back, and
    remove_norms' placeholders."""
    fused = nn.Sequential(nn.Conv2d(6, 6, 1), nl.BatchNorm2d(6, activation="relu"),
                          nn.Conv2d(6, 6, 1), NormAct(nl.BatchNorm2d(6), None, nn.Tanh()))
    for model in (OwnActs(), SharedRelu(), Untraceable(), fused, Functional()):
        model = _randomize(model).eval()
        moved, report = move_norms(model, example_inputs=X)
        back, back_report = move_norms(moved, "before_activation", example_inputs=X)
        assert report.moved and len(back_report.moved) == len(report.moved)
        for new in (moved, back, remove_norms(model), remove_norms(moved)):
            training = [p or type(new).__name__ for p, m in new.named_modules() if m.training]
            assert training == [], (type(model).__name__, training)
        assert not any(m.training for m in model.modules())  # the input is untouched


class _Untraceable(nn.Module):
    """A copy of ``seq`` in a forward torch.fx cannot trace (data-dependent control flow): the
    surgery falls back to moving the Sequential's neighbouring children."""

    def __init__(self, seq: nn.Module):
        super().__init__()
        self.body = copy.deepcopy(seq)

    def forward(self, x):
        y = self.body(x)
        return y if y.sum() > -1e30 else -y


def test_a_norm_already_on_the_asked_side_is_counted_as_already_not_left():
    """Conv -> ReLU -> BN asked "after", Conv -> BN -> ReLU asked "before": nothing to do, and
    the report says so (``already``), in a traced model and in the Sequential fallback; a norm
    with no activation on either side is left with the reason."""
    seq = _randomize(nn.Sequential(nn.Conv2d(6, 6, 1), nn.ReLU(), nn.BatchNorm2d(6),
                                   nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), nn.Identity(),
                                   nn.SiLU(), nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6)))

    for model, pre in ((seq, ""), (_Untraceable(seq), "body.")):
        new, report = move_norms(model, example_inputs=X)
        assert report.method == ("module" if not pre else "submodules")
        assert report.already == [(pre + "2", f"after {pre}1 (ReLU)")]
        assert [p for p, _ in report.moved] == [pre + "4"]
        assert [p for p, _, _ in report.left] == [pre + "8"]
        new, report = move_norms(model, "before_activation", example_inputs=X)
        assert report.already == [(pre + "4", f"before {pre}6 (SiLU)")]
        assert [p for p, _ in report.moved] == [pre + "2"]
        assert [p for p, _, _ in report.left] == [pre + "8"]
        counted = {p for p, _ in report.moved} | {p for p, _ in report.already} | \
            {p for p, _, _ in report.left}
        assert len(counted) == 3 == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


class WithExtras(SharedRelu):
    """SharedRelu (moved in a traced copy) with what its forward does not read: an unused head,
    a top-level parameter and buffer; and a buffer it does read."""

    def __init__(self, c=6):
        super().__init__(c)
        self.register_buffer("scale", torch.full((1,), 0.5))
        self.register_buffer("steps", torch.arange(3.0))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.extra = nn.Parameter(torch.ones(2))
        self.aux_head = nn.Linear(c, 2)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) * self.scale
        return self.relu(out + x)


def test_a_traced_copy_keeps_the_whole_state_dict_and_the_models_hooks():
    model = _randomize(WithExtras())
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append("model"))
    new, report = move_norms(model, example_inputs=X)
    assert report.method == "fx" and [p for p, _ in report.moved] == ["bn1"]
    assert list(new.state_dict()) == list(model.state_dict())  # the same keys, in order
    new.load_state_dict(model.state_dict())
    copy.deepcopy(model).load_state_dict(new.state_dict())
    assert list(copy.deepcopy(new).state_dict()) == list(model.state_dict())
    assert "scratch" not in new.state_dict() and torch.equal(new.scratch, model.scratch)
    assert new.aux_head.weight is not model.aux_head.weight  # a copy, as the rest
    seen.clear()

    def oracle(x, t):
        out = _bn(model.bn1, F.relu(model.conv1(x)), t)
        return F.relu(_bn(model.bn2, model.conv2(out), t) * 0.5 + x)
    _both_modes(new, oracle, X)
    assert seen == ["model", "model"]  # (_both_modes runs deep copies of the moved model)
    back, _ = move_norms(new, "before_activation", example_inputs=X)
    assert list(back.state_dict()) == list(model.state_dict())
    _close(copy.deepcopy(model).eval()(X), copy.deepcopy(back).eval()(X))


def test_an_activation_with_parameters_is_not_moved():
    """PReLU has a weight: a moved copy would rename its state-dict key and, when the module
    is shared, train a second weight; the norm before it stays, with that reason, and the
    state dict keeps its keys (traced model and Sequential fallback)."""
    seq = _randomize(nn.Sequential(nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), nn.PReLU(6),
                                   nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), nn.ReLU()))

    for model, pre in ((seq, ""), (_Untraceable(seq), "body.")):
        new, report = move_norms(model, example_inputs=X)
        assert [p for p, _ in report.moved] == [pre + "4"]
        assert [p for p, _, _ in report.left] == [pre + "1"]
        assert "PReLU" in report.left[0][2] and "parameters" in report.left[0][2]
        assert list(new.state_dict()) == list(model.state_dict())
        assert sum(p.numel() for p in new.parameters()) == \
            sum(p.numel() for p in model.parameters())


def test_a_traced_copy_saved_whole_loads_with_the_same_state_dict_keys():
    """torch.save / torch.load of the whole moved model (not its state dict): a non-persistent
    buffer stays out of the state dict."""
    import io

    model = _randomize(WithExtras())
    new, report = move_norms(model, example_inputs=X)
    assert report.method == "fx"
    saved = io.BytesIO()
    torch.save(new, saved)
    saved.seek(0)
    loaded = torch.load(saved, weights_only=False)
    assert list(loaded.state_dict()) == list(model.state_dict())
    _close(copy.deepcopy(new).eval()(X), loaded.eval()(X))
