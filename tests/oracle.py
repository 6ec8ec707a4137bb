"""Independent float64 oracles, written from the definitions (explicit dims and loops), not from
normlab's plan/view machinery. Tests compare normlab against these and against torch.nn."""

from __future__ import annotations

import torch

TOL = {  # (rtol, atol) per dtype for outputs and gradients against a float64 oracle
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-4, 2e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (4e-3, 4e-3),
}


def close(actual, expected, dtype, scale=1.0):
    """Within the dtype's tolerance; in half precision the absolute part is relative to the
    tensor's largest magnitude (an element that is a cancellation of larger terms carries
    their rounding, a few ulps of the scale, not of itself)."""
    rtol, atol = TOL[dtype]
    expected = expected.double()
    if dtype in (torch.bfloat16, torch.float16) and expected.numel():
        atol = atol * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected, rtol=rtol * scale,
                               atol=atol * scale)


def _affine_channel(y, weight, bias, c_axis):
    shape = [1] * y.dim()
    shape[c_axis] = y.shape[c_axis]
    if weight is not None:
        y = y * weight.double().reshape(shape)
    if bias is not None:
        y = y + bias.double().reshape(shape)
    return y


def _act(y, activation):
    return {None: lambda t: t, "relu": torch.relu, "silu": torch.nn.functional.silu,
            "gelu": torch.nn.functional.gelu}[activation](y)


def batch(x, weight=None, bias=None, eps=1e-5, channel_axis=1):
    x = x.double()
    c = channel_axis % x.dim()
    dims = [d for d in range(x.dim()) if d != c]
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return _affine_channel((x - mean) / torch.sqrt(var + eps), weight, bias, c)


def instance(x, weight=None, bias=None, eps=1e-5, channel_axis=1):
    x = x.double()
    c = channel_axis % x.dim()
    dims = [d for d in range(1, x.dim()) if d != c]
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return _affine_channel((x - mean) / torch.sqrt(var + eps), weight, bias, c)


def group(x, num_groups, weight=None, bias=None, eps=1e-5, channel_axis=1):
    """Loop over samples and groups: a group is C/G consecutive channels of one sample."""
    x = x.double()
    c_axis = channel_axis % x.dim()
    xc = x.movedim(c_axis, 1)  # N, C, ...
    out = torch.empty_like(xc)
    per = xc.shape[1] // num_groups
    for n in range(xc.shape[0]):
        for g in range(num_groups):
            block = xc[n, g * per:(g + 1) * per]
            mean = block.mean()
            var = ((block - mean) ** 2).mean()
            out[n, g * per:(g + 1) * per] = (block - mean) / torch.sqrt(var + eps)
    return _affine_channel(out.movedim(1, c_axis), weight, bias, c_axis)


def _block_dims(x, k, channel_axis):
    return list(range(x.dim() - k, x.dim())) if channel_axis == -1 else list(range(1, 1 + k))


def _affine_block(y, weight, bias, dims):
    shape = [y.shape[d] if d in dims else 1 for d in range(y.dim())]
    if weight is not None:
        y = y * weight.double().reshape(shape)
    if bias is not None:
        y = y + bias.double().reshape(shape)
    return y


def layer(x, normalized_shape, weight=None, bias=None, eps=1e-5, channel_axis=-1):
    x = x.double()
    dims = _block_dims(x, len(normalized_shape), channel_axis)
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return _affine_block((x - mean) / torch.sqrt(var + eps), weight, bias, dims)


def rms(x, normalized_shape, weight=None, eps=1e-6, channel_axis=-1):
    x = x.double()
    dims = _block_dims(x, len(normalized_shape), channel_axis)
    ms = (x * x).mean(dims, keepdim=True)
    return _affine_block(x / torch.sqrt(ms + eps), weight, None, dims)


def adain(content, style, eps=1e-5, channel_axis=1):
    c = channel_axis % content.dim()
    dims = [d for d in range(1, content.dim()) if d != c]
    s = style.double()
    s_var, s_mean = torch.var_mean(s, dims, correction=0, keepdim=True)
    return instance(content, eps=eps, channel_axis=channel_axis) * torch.sqrt(s_var + eps) \
        + s_mean


def epilogue(y, residual=None, activation=None):
    if residual is not None:
        y = y + residual.double()
    return _act(y, activation)
