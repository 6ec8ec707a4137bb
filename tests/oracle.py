"""Independent float64 oracles, written from the definitions (explicit dims and loops), not from
normlab's plan/view machinery. Tests compare normlab against these and against torch.nn."""

from __future__ import annotations

import torch

# THE tolerance table of the test suite: (rtol, atol) per dtype for outputs and gradients
# against a float64 oracle (or another path of the same math). float64 and float32: a few
# hundred ulps (float32's statistics are exact to ~1e-7; sums over long groups grow it).
# float16/bfloat16: the floor of ``close_to_torch``, whose bound is torch's own error.
TOL = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-4, 2e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (4e-3, 4e-3),
}
HALF = (torch.bfloat16, torch.float16)
TORCH_ERROR_MULTIPLE = 2.0  # a low-precision path may err at most twice as much as torch's


def tol(dtype) -> dict:
    """The table's entry as ``torch.testing.assert_close`` keywords."""
    rtol, atol = TOL[dtype]
    return dict(rtol=rtol, atol=atol)


def close(actual, expected, dtype, scale=1.0):
    """Within the dtype's tolerance; in half precision the absolute part is relative to the
    tensor's largest magnitude (an element that is a cancellation of larger terms carries
    their rounding, a few ulps of the scale, not of itself). ``scale`` widens the table for a
    value that sums many rounded terms (at most ~sqrt(n) for n terms)."""
    rtol, atol = TOL[dtype]
    expected = expected.double()
    if dtype in HALF and expected.numel():
        atol = atol * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected, rtol=rtol * scale,
                               atol=atol * scale)


def close_to_torch(actual, expected, baseline, dtype, what="value"):
    """The flash-attention rule for low precision: ``actual``'s largest error against the
    float64 ``expected`` is at most ``TORCH_ERROR_MULTIPLE`` times the largest error of
    ``baseline`` (torch.nn's result on the same low-precision inputs) plus a floor of the
    table's ``atol`` at the tensor's scale. The bound is as tight as torch is: a zeroed, negated
    or tripled gradient errs by its whole magnitude and fails wherever torch itself is better
    than that."""
    expected = expected.double()
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    base = (baseline.double() - expected).abs().max().item() if expected.numel() else 0.0
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    bound = TORCH_ERROR_MULTIPLE * base + TOL[dtype][1] * scale
    assert err <= bound, (f"{what}: error {err:.3g} against float64 exceeds "
                          f"{TORCH_ERROR_MULTIPLE} x torch's own error {base:.3g} + floor "
                          f"{TOL[dtype][1] * scale:.3g} ({dtype})")


def torch_nn(kind, x, weight=None, bias=None, style=None, *, channel_axis=1, groups=None,
             normalized_shape=None, eps=1e-5, residual=None, activation=None):
    """torch.nn.functional's result in the inputs' own dtype (the baseline of
    ``close_to_torch``); AdaIN, which torch lacks, from torch's instance norm and var_mean."""
    import torch.nn.functional as TF

    if kind in ("dyt", "derf"):  # torch has no such layer: the plain composition, input dtype
        dims = _block_dims(x, len(normalized_shape), channel_axis)
        shape = [x.shape[d] if d in dims else 1 for d in range(x.dim())]
        a = style[0]
        t = torch.tanh(a * x) if kind == "dyt" else torch.erf(a * x + style[1])
        y = t if weight is None else weight.reshape(shape) * t
        y = y if bias is None else y + bias.reshape(shape)
        return epilogue_lp(y, residual, activation)
    if kind in ("layer", "rms"):
        k = len(normalized_shape)
        if channel_axis == 1:  # move the block (dims 1..k) to the end and back
            perm = [0, *range(k + 1, x.dim()), *range(1, k + 1)]
            inv = [perm.index(d) for d in range(x.dim())]
            y = torch_nn(kind, x.permute(perm), weight, bias, channel_axis=-1,
                         normalized_shape=normalized_shape, eps=eps)
            return epilogue_lp(y.permute(inv), residual, activation)
        if kind == "layer":
            y = TF.layer_norm(x, normalized_shape, weight, bias, eps)
        else:
            y = TF.rms_norm(x, normalized_shape, weight, eps)
        return epilogue_lp(y, residual, activation)
    if channel_axis == -1:
        xf = x.movedim(-1, 1)
        sf = None if style is None else style.movedim(-1, 1)
        y = torch_nn(kind, xf, weight, bias, sf, channel_axis=1, groups=groups, eps=eps)
        return epilogue_lp(y.movedim(1, -1), residual, activation)
    if kind == "batch":
        y = TF.batch_norm(x, None, None, weight, bias, True, 0.1, eps)
    elif kind == "instance":
        y = TF.instance_norm(x, weight=weight, bias=bias, eps=eps)
    elif kind == "group":
        y = TF.group_norm(x, groups, weight, bias, eps)
    else:
        dims = list(range(2, x.dim()))
        s_var, s_mean = torch.var_mean(style, dims, correction=0, keepdim=True)
        y = TF.instance_norm(x, eps=eps) * torch.sqrt(s_var + eps) + s_mean
    return epilogue_lp(y, residual, activation)


def epilogue_lp(y, residual=None, activation=None):
    if residual is not None:
        y = y + residual
    return _act(y, activation)


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


def dyt(x, normalized_shape, alpha, weight=None, bias=None, channel_axis=-1):
    """Zhu et al.'s DyT from its definition: w * tanh(alpha * x) + b, w and b over the block."""
    x = x.double()
    dims = _block_dims(x, len(normalized_shape), channel_axis)
    return _affine_block(torch.tanh(alpha.double() * x), weight, bias, dims)


def derf(x, normalized_shape, alpha, shift, weight=None, bias=None, channel_axis=-1):
    """Derf from its definition: w * erf(alpha * x + s) + b."""
    x = x.double()
    dims = _block_dims(x, len(normalized_shape), channel_axis)
    return _affine_block(torch.erf(alpha.double() * x + shift.double()), weight, bias, dims)


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


class AuthorsDyT(torch.nn.Module):
    """DyT as Zhu et al. define it (their module's layout: ``alpha`` of shape (1,), ``weight``
    and ``bias`` of shape (C,), channels last or (N, C, H, W)): the independent twin the tests
    compare normlab's DynamicTanh with (not normlab code)."""

    def __init__(self, c, channels_last=True, alpha_init=0.5):
        super().__init__()
        self.channels_last = channels_last
        self.alpha = torch.nn.Parameter(torch.ones(1) * alpha_init)
        self.weight = torch.nn.Parameter(torch.ones(c))
        self.bias = torch.nn.Parameter(torch.zeros(c))

    def forward(self, x):
        x = torch.tanh(self.alpha * x)
        if self.channels_last:
            return x * self.weight + self.bias
        return x * self.weight[:, None, None] + self.bias[:, None, None]
