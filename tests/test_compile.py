"""torch.compile(fullgraph=True) traces a normlab module's forward and backward on CPU."""

from __future__ import annotations

import warnings

import pytest
import torch

import normlab.nn as nl
from tests import oracle


@pytest.mark.slow
@pytest.mark.parametrize("backend", [None, "reference"])
def test_compile_fullgraph_forward_backward(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        nl.BatchNorm2d(8, activation="relu", backend=backend),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        nl.GroupNorm(4, 8, backend=backend),
    )
    eager = torch.nn.Sequential(*[m for m in model])  # same modules, same state
    x = torch.randn(4, 3, 6, 6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if backend else "inductor")
    ye = eager(x.clone().requires_grad_())
    ge = torch.autograd.grad(ye.square().sum(), [p for p in model.parameters()])
    model.zero_grad()
    yc = compiled(x.clone().requires_grad_())
    gc = torch.autograd.grad(yc.square().sum(), [p for p in model.parameters()])
    torch.testing.assert_close(yc, ye, **oracle.tol(torch.float32))
    for a, b in zip(gc, ge, strict=True):
        oracle.close(a, b, torch.float32, scale=10)  # gradients: sums of many terms


def _masked_input(shape, channel_axis, seed):
    """An input of ``shape`` with a positions mask (every sample keeps >= 2 real positions)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2 + 1
    c = channel_axis % len(shape)
    mshape = tuple(n for d, n in enumerate(shape) if d != c)
    mask = torch.rand(mshape, generator=g) > 0.4
    mask.view(mshape[0], -1)[:, :2] = True
    return x, mask


# every module that takes a mask: (name, factory, input shape, channel axis)
MASKED = [
    ("BatchNorm1d", lambda: nl.BatchNorm1d(3), (4, 3, 6), 1),
    ("BatchNorm1d momentum=None", lambda: nl.BatchNorm1d(3, momentum=None), (4, 3, 6), 1),
    ("BatchNorm2d channels-last", lambda: nl.BatchNorm2d(3, channel_axis=-1), (2, 3, 4, 3), -1),
    ("BatchNorm3d", lambda: nl.BatchNorm3d(3, activation="relu"), (2, 3, 2, 2, 3), 1),
    ("InstanceNorm1d tracked", lambda: nl.InstanceNorm1d(3, affine=True,
                                                         track_running_stats=True),
     (4, 3, 6), 1),
    ("InstanceNorm2d tracked momentum=None",
     lambda: nl.InstanceNorm2d(3, momentum=None, track_running_stats=True), (2, 3, 3, 4), 1),
    ("InstanceNorm3d", lambda: nl.InstanceNorm3d(3, affine=True), (2, 3, 2, 2, 3), 1),
    ("GroupNorm", lambda: nl.GroupNorm(2, 4), (3, 4, 5), 1),
    ("LayerNorm", lambda: nl.LayerNorm(4), (3, 5, 4), -1),
    ("RMSNorm", lambda: nl.RMSNorm(4), (3, 5, 4), -1),
]


def _step(fn, module, x, mask):
    xs = x.clone().requires_grad_()
    y = fn(xs, mask=mask)
    grads = torch.autograd.grad(y.square().sum(), [xs, *module.parameters()])
    return y.detach(), grads, {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,factory,shape,axis", MASKED, ids=[m[0] for m in MASKED])
def test_compile_fullgraph_masked_modules(name, factory, shape, axis, mode):
    """Each masked module compiles with fullgraph=True (no data-dependent branch or host sync
    on the mask), in training and eval, and matches eager: output, gradients and buffers."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager, compiled = factory(), factory()
    compiled.load_state_dict(eager.state_dict())
    for m in (eager, compiled):
        m.train(mode == "train")
    step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    for seed in range(2):  # the second call: the buffers after one compiled update
        x, mask = _masked_input(shape, axis, seed)
        ye, ge, se = _step(eager, eager, x, mask)
        yc, gc, sc = _step(step, compiled, x, mask)
        torch.testing.assert_close(yc, ye, **oracle.tol(torch.float32))
        for a, b in zip(gc, ge, strict=True):
            torch.testing.assert_close(a, b, **oracle.tol(torch.float32))
        for k in se:
            torch.testing.assert_close(sc[k], se[k], rtol=1e-6, atol=1e-6, msg=k)
    if mode == "train" and "num_batches_tracked" in se:
        assert se["num_batches_tracked"].item() == 2


@pytest.mark.slow
def test_compile_fullgraph_masked_adain():
    torch._dynamo.reset()
    m = nl.AdaptiveInstanceNorm(3)
    content, cmask = _masked_input((2, 3, 6), 1, 0)
    style, smask = _masked_input((2, 3, 5), 1, 1)
    step = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(step(content, style, content_mask=cmask, style_mask=smask),
                               m(content, style, content_mask=cmask, style_mask=smask))


@pytest.mark.slow
def test_compile_fullgraph_masked_batch_norm_inductor():
    """One masked module through inductor (the default backend), training."""
    torch._dynamo.reset()
    eager, compiled = nl.BatchNorm1d(3, momentum=None), nl.BatchNorm1d(3, momentum=None)
    step = torch.compile(compiled, fullgraph=True)
    x, mask = _masked_input((4, 3, 6), 1, 0)
    torch.testing.assert_close(step(x, mask=mask), eager(x, mask=mask),
                               **oracle.tol(torch.float32))
    torch.testing.assert_close(compiled.running_mean, eager.running_mean)
    torch.testing.assert_close(compiled.running_var, eager.running_var)
    assert compiled.num_batches_tracked.item() == eager.num_batches_tracked.item() == 1


# one instance of every normlab module class, with an input it takes
_x3, _x4, _x5 = torch.randn(2, 4, 5), torch.randn(2, 4, 3, 3), torch.randn(2, 4, 2, 3, 3)
MODULES = [
    (nl.BatchNorm, lambda: nl.BatchNorm(4), (_x3,)),
    (nl.BatchNorm1d, lambda: nl.BatchNorm1d(4), (_x3,)),
    (nl.BatchNorm2d, lambda: nl.BatchNorm2d(4), (_x4,)),
    (nl.BatchNorm3d, lambda: nl.BatchNorm3d(4), (_x5,)),
    (nl.InstanceNorm, lambda: nl.InstanceNorm(4, affine=True), (_x3,)),
    (nl.InstanceNorm1d, lambda: nl.InstanceNorm1d(4), (_x3,)),
    (nl.InstanceNorm2d, lambda: nl.InstanceNorm2d(4, track_running_stats=True), (_x4,)),
    (nl.InstanceNorm3d, lambda: nl.InstanceNorm3d(4), (_x5,)),
    (nl.GroupNorm, lambda: nl.GroupNorm(2, 4), (_x4,)),
    (nl.LayerNorm, lambda: nl.LayerNorm(5), (_x3,)),
    (nl.RMSNorm, lambda: nl.RMSNorm(5), (_x3,)),
    (nl.DynamicTanh, lambda: nl.DynamicTanh(5), (_x3,)),
    (nl.Derf, lambda: nl.Derf(4, channel_axis=1, activation="gelu"), (_x3,)),
    (nl.AdaptiveInstanceNorm, lambda: nl.AdaptiveInstanceNorm(4), (_x3, _x3.flip(2) * 2)),
    (nl.BatchRenorm, lambda: nl.BatchRenorm(4), (_x3,)),
    (nl.BatchRenorm1d, lambda: nl.BatchRenorm1d(4), (_x3,)),
    (nl.BatchRenorm2d, lambda: nl.BatchRenorm2d(4), (_x4,)),
    (nl.BatchRenorm3d, lambda: nl.BatchRenorm3d(4), (_x5,)),
    (nl.GhostBatchNorm, lambda: nl.GhostBatchNorm(4, virtual_batch_size=1), (_x3,)),
    (nl.GhostBatchNorm1d, lambda: nl.GhostBatchNorm1d(4), (_x3,)),
    (nl.GhostBatchNorm2d, lambda: nl.GhostBatchNorm2d(4), (_x4,)),
    (nl.FrozenBatchNorm, lambda: nl.FrozenBatchNorm(4), (_x3,)),
    (nl.FrozenBatchNorm1d, lambda: nl.FrozenBatchNorm1d(4), (_x3,)),
    (nl.FrozenBatchNorm2d, lambda: nl.FrozenBatchNorm2d(4), (_x4,)),
    (nl.FrozenBatchNorm3d, lambda: nl.FrozenBatchNorm3d(4), (_x5,)),
    (nl.SyncBatchNorm, lambda: nl.SyncBatchNorm(4), (_x4,)),
    (nl.LayerNormLSTMCell, lambda: nl.LayerNormLSTMCell(5, 6), (torch.randn(2, 5),)),
    (nl.LayerNormGRUCell, lambda: nl.LayerNormGRUCell(5, 6), (torch.randn(2, 5),)),
    (nl.BatchNormLSTMCell, lambda: nl.BatchNormLSTMCell(5, 6, 3), (torch.randn(2, 5),)),
    (nl.Recurrent, lambda: nl.Recurrent(nl.LayerNormLSTMCell(5, 6)),
     (torch.randn(2, 3, 5),)),
]


def test_every_module_class_is_in_the_table():
    classes = {getattr(nl, n) for n in nl.__all__}
    assert classes == {m[0] for m in MODULES}


@pytest.mark.parametrize("cls,factory,inputs", MODULES, ids=[m[0].__name__ for m in MODULES])
def test_jit_script_refuses_clearly_and_trace_works(cls, factory, inputs):
    """torch.jit.script raises one clear TypeError naming what works (also from inside a
    torch.nn container); torch.jit.trace of the eval-mode module gives the eager output."""
    torch.manual_seed(0)
    module = factory().eval()
    with pytest.raises(TypeError, match=rf"^{cls.__name__}: normlab modules cannot be compiled "
                                        r"by torch\.jit\.script .* use torch\.compile\(model\) "
                                        r".* or torch\.jit\.trace"):
        torch.jit.script(torch.nn.Sequential(torch.nn.Identity(), module))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, inputs, check_trace=False)
    want = module(*inputs)
    got = traced(*inputs)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(traced, torch.jit.ScriptModule)


def test_torch_nn_twin_scripts():
    """The contrast the error is about: torch.nn's own module scripts."""
    torch.jit.script(torch.nn.BatchNorm2d(4))
