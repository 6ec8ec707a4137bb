"""torch.compile(fullgraph=True) traces a normlab module's forward and backward on CPU."""

from __future__ import annotations

import pytest
import torch

import normlab.nn as nl


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
    torch.testing.assert_close(yc, ye, rtol=1e-4, atol=1e-4)
    for a, b in zip(gc, ge, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
