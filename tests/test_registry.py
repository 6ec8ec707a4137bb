from __future__ import annotations

import pytest
import torch

import normlab
import normlab.nn as nl


@pytest.mark.parametrize("name", [n for n in normlab.list_norm_layers() if n != "adain"])
@pytest.mark.parametrize("shape", [(4, 12, 5, 5), (4, 12, 7), (4, 12)], ids=["2d", "1d", "0d"])
def test_every_kind_replaces_every_other(name, shape):
    """One constructor convention: the channel count first, for any input rank."""
    if name == "instance" and len(shape) == 2:
        pytest.skip("instance norm needs positions")
    m = normlab.create_norm_layer(name, 12)
    y = m(torch.randn(shape))
    assert y.shape == shape
    assert isinstance(m, normlab.get_norm_layer(name))


def test_registry_defaults():
    assert normlab.create_norm_layer("group", 64).num_groups == 32
    assert normlab.create_norm_layer("group", 48).num_groups == 16
    assert normlab.create_norm_layer("group", 12, num_groups=3).num_groups == 3
    ln = normlab.create_norm_layer("layer", 8)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    want = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln.double()(x), want)
    nhwc = normlab.create_norm_layer("batch", 8, channel_axis=-1)
    assert nhwc.channel_axis == -1
    assert normlab.get_norm_layer("BATCH") is nl.BatchNorm
    a = normlab.create_norm_layer("adain", 3)
    assert a(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)
