"""The functional API, in torch.nn.functional's argument order; all input validation lives here.

Every function takes, keyword-only, what torch.nn.functional lacks:

* ``channel_axis``: ``1`` (channels first, N x C x ...) or ``-1`` (channels last, N x ... x C).
  For ``layer_norm``/``rms_norm`` the default is ``-1``: the normalized block is the trailing
  dims, as in torch; with ``1`` it is the block starting at axis 1 (e.g. ``normalized_shape=(C,)``
  on an N x C x H x W input normalizes over the channels at each position).
* ``residual``: a tensor of the input's shape added after the affine transform.
* ``activation``: ``None``, ``"relu"``, ``"gelu"`` (exact) or ``"silu"``, applied last:
  ``y = act(norm(x) * weight + bias + residual)``.
* ``mask``: a bool tensor shaped like the input without its channel axis (for an (N, C, L)
  input an (N, L) mask; for layer/rms norm with ``channel_axis=-1`` the last dim is the
  channel axis), True at real positions. Padded positions contribute nothing to the
  statistics or the running statistics, their output and gradient are zero, and their values
  never matter.
* ``backend``: ``None`` or one of the backends of ``normlab.ops.dispatch.BACKEND_LIST``, in
  the order ``None`` tries them (the first that accepts the call runs): ``"triton"`` (the fused
  kernels, masks of batch/instance/group norm included; for CUDA tensors, or any tensor when
  asked for by name with ``TRITON_INTERPRET=1`` set before Triton is imported, which runs them
  on CPU slowly, for tests), ``"masked"`` (normlab's masked batch/instance/group Function),
  ``"numba"`` (normlab's CPU kernels, float32/float64 training statistics; by default for
  float32 channels-first batch, instance, channels-last group (with a backward) and RMS norm
  on inputs of at least 1 Mi elements, where they beat torch's; float64 when asked for by
  name),
  ``"hybrid"`` (instance norm with the channel innermost in memory: torch's forward, the
  closed-form backward), ``"native"`` (torch's kernels; no masks) and ``"reference"`` (the
  closed-form math; takes every call). A backend asked for by name that cannot run the call
  raises ``ValueError`` saying why, except the calls ``"triton"`` and ``"numba"`` hand on
  (running statistics in eval mode, AdaIN, an empty input, a layout the kernels do not read in
  place, masked layer/rms norm; for ``"numba"`` also any mask and dtypes other than float32 and
  float64), which run on the next backend that accepts them.
  ``normlab.ops.trace_backends()`` shows which backend ran.
* ``_shortcut`` (batch, instance, group, layer and RMS norm; private, for the modules): a list
  to which the function that reruns the call is appended when torch's kernel ran it with
  nothing around it (``normlab.ops.dispatch.Native.direct``; the modules keep it and re-check
  it before each use: ``normlab.nn._shortcut``).

Bad input raises ``TypeError`` (not a tensor, a tensor of the wrong dtype, an argument of the
wrong Python type such as ``channel_axis=1.0``) or ``ValueError`` (a value out of range, a
wrong shape, a tensor on another device), naming the argument, what was expected and what was
given.

Dtypes and devices: every tensor argument must be on the input's device. ``weight``, ``bias``,
``running_mean`` and ``running_var`` must have the input's dtype, or float32 when the input is
float16 or bfloat16 (torch.nn's mixed-precision rule; normlab also accepts them mixed, e.g. a
float32 bias beside a bfloat16 weight, where torch raises); ``rms_norm``'s ``weight`` may have
any floating dtype, as torch's (the output keeps the input's dtype). ``residual`` and AdaIN's
``style`` must have the input's dtype exactly.

The pointwise kinds ``dynamic_tanh`` (DyT) and ``derf`` have no statistics, no ``eps`` and no
``mask`` (each element is mapped on its own); their scalar ``alpha`` (and Derf's ``shift``) is a
one-element tensor (shape ``()`` or ``(1,)``, the dtype rule of ``weight``) or a finite real
number, and their ``weight``/``bias`` are laid out over ``normalized_shape`` as layer norm's.

Statistics are float32 for float16/bfloat16/float32 input and float64 for float64 input.
An empty batch (N = 0) gives an empty output and leaves running statistics unchanged.
A NaN in the input makes its own statistics group NaN (its outputs, and in batch norm its
channel and that channel's running statistics); other groups are unaffected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from normlab import ops
from normlab.reference import ACTIVATIONS, stat_dtype

__all__ = [
    "adaptive_instance_norm",
    "batch_norm",
    "batch_renorm",
    "check_input_dim",
    "check_num_features",
    "derf",
    "dynamic_tanh",
    "ghost_batch_renorm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "lengths_to_mask",
    "normalize_shape",
    "rms_norm",
    "script_error",
    "sync_batch_norm",
    "validate_eps",
    "validate_finite",
    "validate_momentum",
    "validate_num_groups",
    "validate_options",
    "validate_nonnegative_int",
    "validate_positive_int",
    "validate_renorm_limits",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # the checks' fast paths (parameters: weights)


# ---------------------------------------------------------------------------------------------
# checks (also called by the modules at construction, so that every message lives here)


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_float_tensor(t, name: str) -> None:
    if type(t) in _PLAIN and t.is_floating_point():  # fast path: most calls end here
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or "
                        f"float64), got {t.dtype}")


def _type_name(value) -> str:
    return type(value).__name__


def _check_real(value, name: str, want: str) -> None:
    """TypeError unless ``value`` is a real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {want}, got {_type_name(value)} {value!r}")


def _check_int(value, name: str, want: str) -> None:
    """TypeError unless ``value`` is an integer (not a bool, not a float such as 1.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {want}, got {_type_name(value)} {value!r}")


def validate_eps(eps) -> float:
    if type(eps) is float and 0.0 < eps < math.inf:  # fast path
        return eps
    _check_real(eps, "eps", "a positive finite number")
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    return float(eps)


def validate_momentum(momentum, *, allow_none: bool = True):
    if momentum is None and allow_none:
        return None
    if type(momentum) is float and 0.0 <= momentum <= 1.0:  # fast path
        return momentum
    extra = " (or None for a cumulative moving average)" if allow_none else ""
    _check_real(momentum, "momentum", f"a number in [0, 1]{extra}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1]{extra}, got {momentum!r}")
    return float(momentum)


def validate_num_groups(num_groups, num_channels) -> None:
    if type(num_groups) is not int:
        _check_int(num_groups, "num_groups", "a positive integer")
    if num_groups <= 0:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}")
    if num_channels % num_groups != 0:
        raise ValueError(f"num_groups must divide the number of channels: num_groups="
                         f"{num_groups} does not divide num_channels={num_channels}")


def validate_finite(value, name: str) -> float:
    """A finite real number (an initial value such as DyT's ``alpha_init``)."""
    _check_real(value, name, "a finite real number")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def validate_positive_int(value, name: str) -> int:
    if type(value) is not int:
        _check_int(value, name, "a positive integer")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def validate_nonnegative_int(value, name: str) -> int:
    if type(value) is not int:
        _check_int(value, name, "an integer >= 0")
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def normalize_shape(normalized_shape) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of positive ints (an int means a 1-tuple)."""
    if type(normalized_shape) is tuple and all(type(n) is int and n > 0
                                               for n in normalized_shape) and normalized_shape:
        return normalized_shape  # fast path
    given = normalized_shape
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    if isinstance(normalized_shape, torch.Size):
        normalized_shape = tuple(normalized_shape)
    want = "a positive integer or a non-empty sequence of positive integers"
    if (not isinstance(normalized_shape, Sequence) or isinstance(normalized_shape, str)
            or any(isinstance(n, bool) or not isinstance(n, numbers.Integral)
                   for n in normalized_shape)):
        raise TypeError(f"normalized_shape must be {want}, got {_type_name(given)} {given!r}")
    if len(normalized_shape) == 0 or any(n <= 0 for n in normalized_shape):
        raise ValueError(f"normalized_shape must be {want}, got {given!r}")
    return tuple(int(n) for n in normalized_shape)


def validate_options(*, channel_axis=1, activation=None, backend=None,
                     allowed_axes=(1, -1)) -> None:
    """Check the normlab-only options shared by every function and module."""
    if type(channel_axis) is not int:
        _check_int(channel_axis, "channel_axis", f"one of {allowed_axes} (an int)")
    if channel_axis not in allowed_axes:
        raise ValueError(f"channel_axis must be one of {allowed_axes}, got {channel_axis!r}")
    if activation is not None and (type(activation) is not str or activation not in ACTIVATIONS):
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")
    if backend is not None and (type(backend) is not str or backend not in ops.BACKENDS):
        raise ValueError(f"backend must be None or one of {ops.BACKENDS}, got {backend!r}")


def script_error(module) -> TypeError:
    """The error ``torch.jit.script`` raises on a normlab module (``normlab.nn._script``)."""
    return TypeError(f"{type(module).__name__}: normlab modules cannot be compiled by "
                     "torch.jit.script (their input validation and per-call backend choice are "
                     "Python that TorchScript does not support); use torch.compile(model) "
                     "(fullgraph=True works), or torch.jit.trace(model, example_inputs) for a "
                     "TorchScript graph")


def check_input_dim(input, allowed: Sequence[int], layer: str) -> None:
    """Raise unless ``input`` has one of the ``allowed`` numbers of dims."""
    _check_float_tensor(input, "input")
    if input.dim() not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise ValueError(f"{layer}: expected {want} input (got {input.dim()}D input)")


def check_num_features(input, num_features: int, channel_axis: int, layer: str) -> None:
    """Raise unless ``input`` has ``num_features`` channels at ``channel_axis``."""
    _check_float_tensor(input, "input")
    if input.dim() < 2:
        raise ValueError(f"{layer}: expected an input with a batch and a channel axis (at least "
                         f"2 dims), got a {input.dim()}D input of shape {_shape(input)}")
    c = input.shape[channel_axis]
    if c != num_features:
        raise ValueError(f"{layer}: expected {num_features} channels at channel_axis="
                         f"{channel_axis} (num_features={num_features}), got input of shape "
                         f"{_shape(input)} with {c}")


def _check_common(input, eps, channel_axis, residual, activation, backend, min_dim, fn):
    _check_float_tensor(input, "input")
    validate_options(channel_axis=channel_axis, activation=activation, backend=backend)
    if backend == "triton" and not ops.triton_usable(input):
        why = ("Triton is not installed" if not ops.triton_available()
               else f"got a {input.device.type} tensor and TRITON_INTERPRET is not 1")
        raise ValueError(f"backend 'triton' needs Triton and a CUDA tensor (or "
                         f"TRITON_INTERPRET=1 set before Triton is imported); {why}")
    if input.dim() < min_dim:
        raise ValueError(f"{fn}: expected an input with at least {min_dim} dims, got a "
                         f"{input.dim()}D input of shape {_shape(input)}")
    if eps is not None:
        validate_eps(eps)
    if residual is not None:
        _check_float_tensor(residual, "residual")
        if residual.shape != input.shape:
            raise ValueError(f"residual must have the input's shape {_shape(input)}, got "
                             f"{_shape(residual)}")
        _check_same_dtype_device(residual, "residual", input, "input")


def _check_same_dtype_device(t, name: str, like, like_name: str) -> None:
    """``t`` must have the dtype and the device of ``like`` (exactly)."""
    if t.dtype != like.dtype:
        raise TypeError(f"{name} must have the {like_name}'s dtype {like.dtype}, got {t.dtype}")
    _check_device(t, name, like, like_name)


def _check_device(t, name: str, like, like_name: str = "input") -> None:
    if t.device != like.device:
        raise ValueError(f"{name} must be on the {like_name}'s device {like.device}, got "
                         f"{t.device}")


def _param_dtype_ok(t, input) -> bool:
    return t.dtype == input.dtype or (t.dtype == torch.float32
                                      and input.dtype in _HALF_DTYPES)


def _check_param_dtype_device(t, name: str, input, any_dtype: bool = False) -> None:
    """A parameter or statistic: the input's device; the input's dtype or float32 for a
    float16/bfloat16 input (any floating dtype with ``any_dtype``)."""
    if not any_dtype and not _param_dtype_ok(t, input):
        half = " or torch.float32" if input.dtype in _HALF_DTYPES else ""
        raise TypeError(f"{name} must have the input's dtype {input.dtype}{half}, got "
                        f"{t.dtype}")
    _check_device(t, name, input)


def _check_per_channel(t, name: str, c: int, channel_axis: int, input) -> None:
    if t is None or (type(t) in _PLAIN and t.dim() == 1 and t.shape[0] == c
                     and t.dtype is input.dtype and t.device == input.device):
        return  # fast path
    _check_float_tensor(t, name)
    if _shape(t) != (c,):
        raise ValueError(f"{name} must have shape ({c},) to match the input's {c} channels at "
                         f"channel_axis={channel_axis}, got shape {_shape(t)}")
    _check_param_dtype_device(t, name, input)


def _check_per_element(t, name: str, shape: tuple[int, ...], input,
                       any_dtype: bool = False) -> None:
    if t is None or (type(t) in _PLAIN and t.shape == shape and t.dtype is input.dtype
                     and t.device == input.device):
        return  # fast path
    _check_float_tensor(t, name)
    if _shape(t) != shape:
        raise ValueError(f"{name} must have normalized_shape {shape}, got shape {_shape(t)}")
    _check_param_dtype_device(t, name, input, any_dtype)


def _check_num_batches_tracked(t, input, running_mean, momentum) -> None:
    if t is None:
        if momentum is None:
            raise ValueError("momentum=None (the cumulative average) needs num_batches_tracked, "
                             "the count of the batches averaged so far; got "
                             "num_batches_tracked=None")
        return
    if not isinstance(t, torch.Tensor) or t.dim() != 0 or t.dtype != torch.int64:
        got = (f"a {t.dim()}D {t.dtype} tensor" if isinstance(t, torch.Tensor)
               else _type_name(t))
        raise TypeError(f"num_batches_tracked must be a 0-dim int64 tensor, got {got}")
    _check_device(t, "num_batches_tracked", input)
    if running_mean is None:
        raise ValueError("num_batches_tracked counts the batches that update running_mean and "
                         "running_var; got it without them")


def _check_running(running_mean, running_var, c, channel_axis, required: bool, why: str,
                   input):
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None), "
                         f"got running_mean={'None' if running_mean is None else 'a tensor'}, "
                         f"running_var={'None' if running_var is None else 'a tensor'}")
    if required and running_mean is None:
        raise ValueError(f"running_mean and running_var are required when {why}")
    _check_per_channel(running_mean, "running_mean", c, channel_axis, input)
    _check_per_channel(running_var, "running_var", c, channel_axis, input)


def _check_mask(mask, input, channel_axis, name: str = "mask") -> None:
    if mask is None:
        return
    if type(mask) is torch.Tensor and mask.dtype is torch.bool and mask.device == input.device \
            and mask.dim() == input.dim() - 1:
        pass  # the shape is checked below
    elif not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (True at real positions), got {got}")
    c = channel_axis % input.dim()
    want = tuple(n for d, n in enumerate(input.shape) if d != c)
    if tuple(mask.shape) != want:
        raise ValueError(f"{name} must have the input's shape without its channel axis "
                         f"{want}, got {tuple(mask.shape)} (input {_shape(input)}, "
                         f"channel_axis={channel_axis})")
    _check_device(mask, name, input)


def lengths_to_mask(lengths, max_len: int | None = None) -> torch.Tensor:
    """An (N, max_len) bool mask, True at positions ``< lengths[n]`` (``max_len`` defaults to
    the longest length)."""
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.is_complex() \
            or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1D integer tensor, got {lengths.dim()}D "
                         f"{lengths.dtype}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_len is None:
        max_len = longest
    max_len = validate_nonnegative_int(max_len, "max_len")
    if longest > max_len:
        raise ValueError(f"max_len={max_len} is shorter than the longest length {longest}")
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _check_block(input, normalized_shape, channel_axis) -> None:
    k = len(normalized_shape)
    if channel_axis == -1 and input.shape[-k:] == normalized_shape and input.dim() >= k:
        return  # fast path
    if channel_axis == -1:
        block, where = _shape(input)[input.dim() - k:], f"last {k}"
    else:
        block, where = _shape(input)[1:1 + k], f"{k} starting at axis 1"
    if input.dim() < k + (0 if channel_axis == -1 else 1) or block != normalized_shape:
        raise ValueError(f"normalized_shape {normalized_shape} must match the input's {where} "
                         f"dims (channel_axis={channel_axis}), got input of shape "
                         f"{_shape(input)}")


# ---------------------------------------------------------------------------------------------
# the functions


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, residual=None, activation=None,
               backend=None, mask=None, num_batches_tracked=None, _shortcut=None):
    """Batch norm: statistics per channel over the batch and all positions.

    In training the batch statistics are used and ``running_mean``/``running_var`` (if given)
    are updated in place: ``running = (1 - momentum) * running + momentum * batch`` with the
    unbiased batch variance. Out of training the running statistics are used.

    ``num_batches_tracked`` (a 0-dim int64 tensor, with the running statistics): incremented
    in place exactly when this call moves them (not for an empty batch, nor for a masked batch
    with no real values); ``momentum=None`` then means the cumulative average, factor
    ``1 / num_batches_tracked``, as torch.nn's modules with ``momentum=None``.

    A masked batch with a single real value per channel is refused in training, as torch.nn
    refuses one value per channel; under ``torch.compile`` the count of real values is not
    known while tracing, so it is not checked there: that batch's statistics are left out of
    the running ones (and it is not counted), as for an all-padding batch.
    """
    _check_common(input, eps, channel_axis, residual, activation, backend, 2, "batch_norm")
    momentum = validate_momentum(momentum)  # None: checked with num_batches_tracked
    c = input.shape[channel_axis]
    _check_running(running_mean, running_var, c, channel_axis, not training, "training=False",
                   input)
    _check_per_channel(weight, "weight", c, channel_axis, input)
    _check_per_channel(bias, "bias", c, channel_axis, input)
    _check_mask(mask, input, channel_axis)
    _check_num_batches_tracked(num_batches_tracked, input, running_mean, momentum)
    if training and mask is None and input.numel() == c:
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{list(input.shape)}")
    if training and mask is not None and not torch.compiler.is_compiling() \
            and int(mask.sum()) == 1:
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{list(input.shape)} with 1 real position")
    return ops.batch_norm(input, running_mean, running_var, weight, bias, bool(training),
                          momentum, float(eps), channel_axis=channel_axis, residual=residual,
                          activation=activation, backend=backend, mask=mask,
                          num_batches_tracked=num_batches_tracked, shortcut=_shortcut)


def validate_renorm_limits(r_max, d_max) -> tuple[float, float]:
    _check_real(r_max, "r_max", "a number >= 1")
    if not r_max >= 1:  # inf: no limit
        raise ValueError(f"r_max must be a number >= 1, got {r_max!r}")
    _check_real(d_max, "d_max", "a number >= 0")
    if not d_max >= 0:
        raise ValueError(f"d_max must be a number >= 0, got {d_max!r}")
    return float(r_max), float(d_max)


def _check_batch_norm_like(fn, input, running_mean, running_var, weight, bias, training,
                           momentum, eps, channel_axis, residual, activation,
                           require_running=False, local_batch=True):
    _check_common(input, eps, channel_axis, residual, activation, None, 2, fn)
    momentum = validate_momentum(momentum, allow_none=False)
    c = input.shape[channel_axis]
    _check_running(running_mean, running_var, c, channel_axis, require_running or not training,
                   "training=False" if not training else f"{fn} trains (it corrects the batch "
                   "statistics towards them)", input)
    _check_per_channel(weight, "weight", c, channel_axis, input)
    _check_per_channel(bias, "bias", c, channel_axis, input)
    if local_batch and training and input.numel() == c:
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{list(input.shape)}")
    return momentum


def batch_renorm(input, running_mean, running_var, weight=None, bias=None, training=False,
                 momentum=0.01, eps=1e-5, r_max=3.0, d_max=5.0, *, channel_axis=1,
                 residual=None, activation=None):
    """Batch renormalization (Ioffe 2017). In training
    ``xhat = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max, r_max)``
    and ``d = clip((mu_B - mu) / sigma, -d_max, d_max)`` from the running statistics (which are
    required, and updated in place as batch norm does), r and d constant in backward. With
    ``r_max=1, d_max=0`` it is batch norm. Out of training: batch norm with running
    statistics."""
    momentum = _check_batch_norm_like("batch_renorm", input, running_mean, running_var, weight,
                                      bias, training, momentum, eps, channel_axis, residual,
                                      activation, require_running=True)
    r_max, d_max = validate_renorm_limits(r_max, d_max)
    return ops.batch_renorm(input, running_mean, running_var, weight, bias, bool(training),
                            momentum, float(eps), r_max, d_max, channel_axis=channel_axis,
                            residual=residual, activation=activation)


def ghost_batch_renorm(input, running_mean, running_var, weight, bias, factors, limits,
                       eps=1e-5, *, channel_axis=1, residual=None, activation=None):
    """Training batch renorm over ``len(factors)`` consecutive chunks of equal size of
    ``input`` (ghost batches) in one pass: the same as :func:`batch_renorm` on each chunk in
    order, chunk g with ``momentum=factors[g]`` and ``(r_max, d_max) = limits[g]`` (what
    ``BatchRenorm(virtual_batch_size=k)`` computes per chunk from its batch count)."""
    if not isinstance(factors, (list, tuple)) or len(factors) == 0:
        raise TypeError(f"factors must be a non-empty list of numbers, got {factors!r}")
    if not isinstance(limits, (list, tuple)) or len(limits) != len(factors):
        raise ValueError(f"limits must be a list of (r_max, d_max) pairs, one per factor "
                         f"({len(factors)}), got {limits!r}")
    _check_float_tensor(input, "input")
    if input.dim() < 2 or input.shape[0] % len(factors) != 0:
        raise ValueError(f"input's batch of {input.shape[0] if input.dim() else 0} must split "
                         f"into {len(factors)} chunks of equal size")
    chunk = input[: input.shape[0] // len(factors)]
    factors = [_check_batch_norm_like("ghost_batch_renorm", chunk, running_mean, running_var,
                                      weight, bias, True, f, eps, channel_axis, None,
                                      activation, require_running=True) for f in factors]
    if residual is not None:
        _check_common(input, eps, channel_axis, residual, activation, None, 2,
                      "ghost_batch_renorm")
    limits = [validate_renorm_limits(*lim) for lim in limits]
    return ops.ghost_batch_renorm(input, running_mean, running_var, weight, bias, factors,
                                  limits, float(eps), channel_axis=channel_axis,
                                  residual=residual, activation=activation)


def sync_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5, *, process_group=None, channel_axis=1,
                    residual=None, activation=None):
    """Batch norm whose training statistics are those of the batch concatenated over the
    processes of ``process_group`` (default: the whole world), on any torch.distributed
    backend. Every process must call it (an empty batch too). Out of training, or with one
    process, it is batch norm and nothing is communicated."""
    momentum = _check_batch_norm_like("sync_batch_norm", input, running_mean, running_var,
                                      weight, bias, training, momentum, eps, channel_axis,
                                      residual, activation, local_batch=False)
    # one value per channel is checked over all processes, after the statistics' exchange
    return ops.sync_batch_norm(input, running_mean, running_var, weight, bias, bool(training),
                               momentum, float(eps), channel_axis=channel_axis,
                               process_group=process_group, residual=residual,
                               activation=activation)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, *, channel_axis=1,
                  residual=None, activation=None, backend=None, mask=None,
                  num_batches_tracked=None, _shortcut=None):
    """Instance norm: statistics per sample and channel over all positions.

    With ``use_input_stats`` the sample's statistics are used and the running statistics (if
    given) are updated with their average over the batch; otherwise the running statistics are
    used. ``num_batches_tracked`` as in :func:`batch_norm` (a masked batch moves the running
    statistics when some sample has 2 real positions).
    """
    _check_common(input, eps, channel_axis, residual, activation, backend, 3, "instance_norm")
    momentum = validate_momentum(momentum)  # None: checked with num_batches_tracked
    c = input.shape[channel_axis]
    _check_running(running_mean, running_var, c, channel_axis, not use_input_stats,
                   "use_input_stats=False", input)
    _check_per_channel(weight, "weight", c, channel_axis, input)
    _check_per_channel(bias, "bias", c, channel_axis, input)
    _check_mask(mask, input, channel_axis)
    _check_num_batches_tracked(num_batches_tracked, input, running_mean, momentum)
    if use_input_stats and input.numel() > 0 and input.numel() == input.shape[0] * c:
        raise ValueError("Expected more than 1 spatial element when training, got input size "
                         f"{list(input.shape)}")
    return ops.instance_norm(input, running_mean, running_var, weight, bias,
                             bool(use_input_stats), momentum, float(eps),
                             channel_axis=channel_axis, residual=residual,
                             activation=activation, backend=backend, mask=mask,
                             num_batches_tracked=num_batches_tracked, shortcut=_shortcut)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1,
               residual=None, activation=None, backend=None, mask=None, _shortcut=None):
    """Group norm: statistics per sample over ``C / num_groups`` consecutive channels and all
    positions; per-channel affine."""
    _check_common(input, eps, channel_axis, residual, activation, backend, 2, "group_norm")
    c = input.shape[channel_axis]
    validate_num_groups(num_groups, c)
    # one value per group is computed (its output is the bias), as torch.nn.GroupNorm does
    _check_per_channel(weight, "weight", c, channel_axis, input)
    _check_per_channel(bias, "bias", c, channel_axis, input)
    _check_mask(mask, input, channel_axis)
    return ops.group_norm(input, int(num_groups), weight, bias, float(eps),
                          channel_axis=channel_axis, residual=residual, activation=activation,
                          backend=backend, mask=mask, shortcut=_shortcut)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, channel_axis=-1,
               residual=None, activation=None, backend=None, mask=None, _shortcut=None):
    """Layer norm: statistics per sample over the ``normalized_shape`` block (the trailing dims
    with ``channel_axis=-1``, the dims from axis 1 with ``channel_axis=1``); per-element
    affine."""
    _check_common(input, eps, channel_axis, residual, activation, backend, 1, "layer_norm")
    normalized_shape = normalize_shape(normalized_shape)
    _check_block(input, normalized_shape, channel_axis)
    _check_per_element(weight, "weight", normalized_shape, input)
    _check_per_element(bias, "bias", normalized_shape, input)
    _check_mask(mask, input, channel_axis)
    return ops.layer_norm(input, normalized_shape, weight, bias, float(eps),
                          channel_axis=channel_axis, residual=residual, activation=activation,
                          backend=backend, mask=mask, shortcut=_shortcut)


def rms_norm(input, normalized_shape, weight=None, eps=None, *, channel_axis=-1, residual=None,
             activation=None, backend=None, mask=None, _shortcut=None):
    """RMS norm: ``x / sqrt(mean(x^2) + eps) * weight`` over the ``normalized_shape`` block.
    ``eps=None`` means the machine epsilon of the dtype the statistics are computed in, as
    torch's kernel does: ``torch.finfo(input.dtype).eps`` for float32 and float64, float32's
    for float16 and bfloat16 input (torch's documentation says the input's dtype; its kernel
    uses float32's, and bfloat16's 0.0078 would swamp the mean square of small activations)."""
    _check_common(input, eps, channel_axis, residual, activation, backend, 1, "rms_norm")
    normalized_shape = normalize_shape(normalized_shape)
    _check_block(input, normalized_shape, channel_axis)
    _check_per_element(weight, "weight", normalized_shape, input, any_dtype=True)
    _check_mask(mask, input, channel_axis)
    eps = torch.finfo(stat_dtype(input.dtype)).eps if eps is None else float(eps)
    return ops.rms_norm(input, normalized_shape, weight, eps, channel_axis=channel_axis,
                        residual=residual, activation=activation, backend=backend, mask=mask,
                        shortcut=_shortcut)


def _scalar_param(value, name: str, input):
    """A pointwise kind's scalar: a one-element floating tensor (the parameter dtype rule, the
    input's device) or a finite real number, returned as a tensor."""
    if type(value) is torch.Tensor and value.numel() == 1 and value.dim() <= 1 \
            and value.dtype is input.dtype and value.device == input.device:
        return value  # fast path
    if isinstance(value, torch.Tensor):
        _check_float_tensor(value, name)
        if value.numel() != 1 or value.dim() > 1:
            raise ValueError(f"{name} must be a one-element tensor of shape () or (1,), got "
                             f"shape {_shape(value)}")
        _check_param_dtype_device(value, name, input)
        return value
    _check_real(value, name, "a one-element tensor or a finite real number")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    dtype = torch.float32 if input.dtype in _HALF_DTYPES else input.dtype
    return torch.tensor(float(value), dtype=dtype, device=input.device)


def _check_pointwise(fn, input, normalized_shape, weight, bias, channel_axis, residual,
                     activation, backend):
    _check_common(input, None, channel_axis, residual, activation, backend, 1, fn)
    normalized_shape = normalize_shape(normalized_shape)
    _check_block(input, normalized_shape, channel_axis)
    _check_per_element(weight, "weight", normalized_shape, input)
    _check_per_element(bias, "bias", normalized_shape, input)
    return normalized_shape


def dynamic_tanh(input, normalized_shape, alpha, weight=None, bias=None, *, channel_axis=-1,
                 residual=None, activation=None, backend=None):
    """Dynamic Tanh (DyT; Zhu, Chen, He, LeCun, Liu, CVPR 2025): ``weight * tanh(alpha * x) +
    bias`` elementwise, no statistics. ``alpha``: a learnable scalar (a one-element tensor, or
    a number); ``weight``/``bias`` per element over the ``normalized_shape`` block (the trailing
    dims with ``channel_axis=-1``, the dims from axis 1 with ``channel_axis=1``, as
    :func:`layer_norm`). Computed in float32 for float16/bfloat16 input."""
    normalized_shape = _check_pointwise("dynamic_tanh", input, normalized_shape, weight, bias,
                                        channel_axis, residual, activation, backend)
    alpha = _scalar_param(alpha, "alpha", input)
    return ops.dynamic_tanh(input, normalized_shape, alpha, weight, bias,
                            channel_axis=channel_axis, residual=residual, activation=activation,
                            backend=backend)


def derf(input, normalized_shape, alpha, shift=None, weight=None, bias=None, *,
         channel_axis=-1, residual=None, activation=None, backend=None):
    """Dynamic erf (Derf; Chen, Lu, Zhu, Sun, Liu, arXiv 2512.10938): ``weight * erf(alpha * x
    + shift) + bias`` elementwise, no statistics; ``alpha`` and ``shift`` learnable scalars
    (``shift=None``: 0). Arguments as :func:`dynamic_tanh`."""
    normalized_shape = _check_pointwise("derf", input, normalized_shape, weight, bias,
                                        channel_axis, residual, activation, backend)
    alpha = _scalar_param(alpha, "alpha", input)
    shift = None if shift is None else _scalar_param(shift, "shift", input)
    return ops.derf(input, normalized_shape, alpha, shift, weight, bias,
                    channel_axis=channel_axis, residual=residual, activation=activation,
                    backend=backend)


def adaptive_instance_norm(content, style, eps=1e-5, *, channel_axis=1, residual=None,
                           activation=None, backend=None, content_mask=None, style_mask=None):
    """AdaIN (Huang & Belongie 2017): ``sigma(style) * (content - mu(content)) / sigma(content)
    + mu(style)``, statistics per sample and channel over positions, ``sigma = sqrt(var + eps)``
    with the biased variance. ``style`` has the content's rank and channel count, and either
    the content's batch size or 1 (one style for the whole batch); its positions may differ.
    ``content_mask``/``style_mask`` (bool, each input's shape without the channel axis) keep
    padded positions out of both inputs' statistics; the output is zero at padded content
    positions."""
    _check_common(content, eps, channel_axis, residual, activation, backend, 3,
                  "adaptive_instance_norm")
    _check_float_tensor(style, "style")
    _check_same_dtype_device(style, "style", content, "content")
    if style.dim() != content.dim():
        raise ValueError(f"style must have the content's rank {content.dim()}D, got a "
                         f"{style.dim()}D style of shape {_shape(style)}")
    c, cs = content.shape[channel_axis], style.shape[channel_axis]
    if cs != c:
        raise ValueError(f"style must have the content's {c} channels at channel_axis="
                         f"{channel_axis}, got {cs} (content {_shape(content)}, style "
                         f"{_shape(style)})")
    if style.shape[0] not in (content.shape[0], 1):
        raise ValueError(f"style must have the content's batch size {content.shape[0]} or 1, "
                         f"got {style.shape[0]}")
    for name, t in (("content", content), ("style", style)):
        if t.numel() > 0 and t.numel() == t.shape[0] * c:
            raise ValueError(f"Expected more than 1 spatial element in {name}, got size "
                             f"{list(t.shape)}")
    _check_mask(content_mask, content, channel_axis, "content_mask")
    _check_mask(style_mask, style, channel_axis, "style_mask")
    return ops.adaptive_instance_norm(content, style, float(eps), channel_axis=channel_axis,
                                      residual=residual, activation=activation, backend=backend,
                                      content_mask=content_mask, style_mask=style_mask)
