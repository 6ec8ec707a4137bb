"""Bad input is a tested contract: each row is (call, exception type, message pattern)."""

from __future__ import annotations

import pytest
import torch

import normlab
import normlab.functional as F
import normlab.nn as nl

x4 = torch.randn(2, 4, 3, 3)
x2 = torch.randn(2, 4)

f32, f64, bf16 = torch.float32, torch.float64, torch.bfloat16
x3 = torch.randn(2, 4, 5)
m2 = torch.ones(2, 5, dtype=torch.bool)


def _t(*shape, dtype=f32, device="cpu"):
    return torch.ones(shape, dtype=dtype, device=device)


def _bn(**kw):
    """F.batch_norm on x4 in training, with float32 statistics and affine unless replaced."""
    args = dict(running_mean=_t(4), running_var=_t(4), weight=_t(4), bias=_t(4))
    args.update(kw)
    inp = args.pop("input", x4)
    return F.batch_norm(inp, args.pop("running_mean"), args.pop("running_var"),
                        args.pop("weight"), args.pop("bias"), training=True, **args)


# Bad API arguments: a tensor whose dtype or device is not the input's, an int argument of the
# wrong type (TypeError) or out of range (ValueError). The 'meta' device stands for another
# device (no GPU here): the check is on the device, whichever it is.
BAD_ARGUMENTS = [
    # dtype: the input's, or float32 for a half input (torch.nn's rule)
    ("float64 weight", lambda: _bn(weight=_t(4, dtype=f64)),
     TypeError, r"^weight must have the input's dtype torch\.float32, got torch\.float64$"),
    ("float64 bias", lambda: _bn(bias=_t(4, dtype=f64)),
     TypeError, r"^bias must have the input's dtype torch\.float32, got torch\.float64$"),
    ("float64 running_mean", lambda: _bn(running_mean=_t(4, dtype=f64)),
     TypeError, r"^running_mean must have the input's dtype torch\.float32, got torch\.float64$"),
    ("float16 running_var", lambda: _bn(running_var=_t(4, dtype=torch.float16)),
     TypeError, r"^running_var must have the input's dtype torch\.float32, got torch\.float16$"),
    ("bfloat16 weight, float32 input", lambda: _bn(weight=_t(4, dtype=bf16)),
     TypeError, r"^weight must have the input's dtype torch\.float32, got torch\.bfloat16$"),
    ("float64 weight, bfloat16 input", lambda: _bn(input=x4.to(bf16), weight=_t(4, dtype=f64)),
     TypeError, r"^weight must have the input's dtype torch\.bfloat16 or torch\.float32, got "
                r"torch\.float64$"),
    ("float64 stats, eval", lambda: F.batch_norm(x4, _t(4, dtype=f64), _t(4, dtype=f64)),
     TypeError, r"^running_mean must have the input's dtype torch\.float32, got torch\.float64$"),
    ("instance float64 running_var", lambda: F.instance_norm(x3, _t(4), _t(4, dtype=f64)),
     TypeError, r"^running_var must have the input's dtype torch\.float32"),
    ("group float64 weight", lambda: F.group_norm(x4, 2, _t(4, dtype=f64)),
     TypeError, r"^weight must have the input's dtype torch\.float32, got torch\.float64$"),
    ("layer float64 bias", lambda: F.layer_norm(x2, (4,), _t(4), _t(4, dtype=f64)),
     TypeError, r"^bias must have the input's dtype torch\.float32, got torch\.float64$"),
    ("renorm float64 running_mean",
     lambda: F.batch_renorm(x4, _t(4, dtype=f64), _t(4), training=True),
     TypeError, r"^running_mean must have the input's dtype torch\.float32"),
    ("sync float64 weight", lambda: F.sync_batch_norm(x4, None, None, _t(4, dtype=f64),
                                                      training=True),
     TypeError, r"^weight must have the input's dtype torch\.float32"),
    ("float64 residual", lambda: F.layer_norm(x2, (4,), residual=_t(2, 4, dtype=f64)),
     TypeError, r"^residual must have the input's dtype torch\.float32, got torch\.float64$"),
    ("float64 style", lambda: F.adaptive_instance_norm(x3, _t(2, 4, 5, dtype=f64)),
     TypeError, r"^style must have the content's dtype torch\.float32, got torch\.float64$"),
    # device
    ("weight on meta", lambda: _bn(weight=_t(4, device="meta")),
     ValueError, r"^weight must be on the input's device cpu, got meta$"),
    ("running_var on meta", lambda: _bn(running_var=_t(4, device="meta")),
     ValueError, r"^running_var must be on the input's device cpu, got meta$"),
    ("input on meta, weight on cpu", lambda: _bn(input=_t(2, 4, 3, 3, device="meta")),
     ValueError, r"^running_mean must be on the input's device meta, got cpu$"),
    ("instance bias on meta", lambda: F.instance_norm(x3, bias=_t(4, device="meta")),
     ValueError, r"^bias must be on the input's device cpu, got meta$"),
    ("group weight on meta", lambda: F.group_norm(x4, 2, _t(4, device="meta")),
     ValueError, r"^weight must be on the input's device cpu, got meta$"),
    ("layer weight on meta", lambda: F.layer_norm(x2, (4,), _t(4, device="meta")),
     ValueError, r"^weight must be on the input's device cpu, got meta$"),
    ("rms weight on meta", lambda: F.rms_norm(x2, (4,), _t(4, device="meta")),
     ValueError, r"^weight must be on the input's device cpu, got meta$"),
    ("renorm bias on meta", lambda: F.batch_renorm(x4, _t(4), _t(4), bias=_t(4, device="meta")),
     ValueError, r"^bias must be on the input's device cpu, got meta$"),
    ("sync running_mean on meta",
     lambda: F.sync_batch_norm(x4, _t(4, device="meta"), _t(4, device="meta")),
     ValueError, r"^running_mean must be on the input's device cpu, got meta$"),
    ("residual on meta", lambda: F.group_norm(x4, 2, residual=_t(2, 4, 3, 3, device="meta")),
     ValueError, r"^residual must be on the input's device cpu, got meta$"),
    ("style on meta", lambda: F.adaptive_instance_norm(x3, _t(2, 4, 5, device="meta")),
     ValueError, r"^style must be on the content's device cpu, got meta$"),
    ("mask on meta", lambda: F.batch_norm(x3, None, None, training=True,
                                          mask=m2.to("meta")),
     ValueError, r"^mask must be on the input's device cpu, got meta$"),
    ("style_mask on meta", lambda: F.adaptive_instance_norm(x3, x3, style_mask=m2.to("meta")),
     ValueError, r"^style_mask must be on the input's device cpu, got meta$"),
    ("content_mask float", lambda: F.adaptive_instance_norm(x3, x3, content_mask=m2.float()),
     TypeError, r"^content_mask must be a bool tensor \(True at real positions\), got "
                r"torch\.float32$"),
    # num_batches_tracked (the count momentum=None averages over)
    ("num_batches_tracked float", lambda: _bn(num_batches_tracked=torch.tensor(0.0)),
     TypeError, r"^num_batches_tracked must be a 0-dim int64 tensor, got a 0D torch\.float32"),
    ("num_batches_tracked on meta",
     lambda: _bn(num_batches_tracked=torch.tensor(0, device="meta")),
     ValueError, r"^num_batches_tracked must be on the input's device cpu, got meta$"),
    ("num_batches_tracked without stats",
     lambda: _bn(running_mean=None, running_var=None, num_batches_tracked=torch.tensor(0)),
     ValueError, r"^num_batches_tracked counts the batches that update running_mean"),
    ("momentum None without a count", lambda: _bn(momentum=None),
     ValueError, r"^momentum=None \(the cumulative average\) needs num_batches_tracked"),
    # int arguments: the type (TypeError), then the range (ValueError)
    ("channel_axis 1.0", lambda: F.batch_norm(x4, None, None, training=True, channel_axis=1.0),
     TypeError, r"^channel_axis must be one of \(1, -1\) \(an int\), got float 1\.0$"),
    ("channel_axis True", lambda: F.layer_norm(x2, (4,), channel_axis=True),
     TypeError, r"^channel_axis must be one of .* got bool True$"),
    ("channel_axis '1'", lambda: F.group_norm(x4, 2, channel_axis="1"),
     TypeError, r"^channel_axis must be one of .* got str '1'$"),
    ("ctor channel_axis -1.0", lambda: nl.GroupNorm(2, 4, channel_axis=-1.0),
     TypeError, r"^channel_axis must be one of .* got float -1\.0$"),
    ("num_groups 2.0", lambda: F.group_norm(x4, 2.0),
     TypeError, r"^num_groups must be a positive integer, got float 2\.0$"),
    ("num_groups True", lambda: nl.GroupNorm(True, 4),
     TypeError, r"^num_groups must be a positive integer, got bool True$"),
    ("num_groups -2", lambda: F.group_norm(x4, -2),
     ValueError, r"^num_groups must be a positive integer, got -2$"),
    ("num_channels 4.0", lambda: nl.GroupNorm(2, 4.0),
     TypeError, r"^num_channels must be a positive integer, got float 4\.0$"),
    ("normalized_shape entry 4.0", lambda: F.layer_norm(x2, (4.0,)),
     TypeError, r"^normalized_shape must be .* got tuple \(4\.0,\)$"),
    ("normalized_shape entry True", lambda: nl.RMSNorm((True,)),
     TypeError, r"^normalized_shape must be .* got tuple \(True,\)$"),
    ("normalized_shape float", lambda: nl.LayerNorm(4.0),
     TypeError, r"^normalized_shape must be .* got float 4\.0$"),
    ("normalized_shape empty", lambda: nl.LayerNorm(()),
     ValueError, r"^normalized_shape must be .* got \(\)$"),
    ("num_features True", lambda: nl.InstanceNorm1d(True),
     TypeError, r"^num_features must be a positive integer, got bool True$"),
    ("virtual_batch_size 0", lambda: nl.GhostBatchNorm2d(4, virtual_batch_size=0),
     ValueError, r"^virtual_batch_size must be a positive integer, got 0$"),
    ("virtual_batch_size 2.5", lambda: nl.GhostBatchNorm1d(4, virtual_batch_size=2.5),
     TypeError, r"^virtual_batch_size must be a positive integer, got float 2\.5$"),
    ("renorm virtual_batch_size 0", lambda: nl.BatchRenorm2d(4, virtual_batch_size=0),
     ValueError, r"^virtual_batch_size must be a positive integer, got 0$"),
    ("renorm virtual_batch_size 2.0", lambda: nl.BatchRenorm1d(4, virtual_batch_size=2.0),
     TypeError, r"^virtual_batch_size must be a positive integer, got float 2\.0$"),
    ("warmup_steps 1.5", lambda: nl.BatchRenorm2d(4, warmup_steps=1.5),
     TypeError, r"^warmup_steps must be an integer >= 0, got float 1\.5$"),
    ("warmup_steps False", lambda: nl.BatchRenorm2d(4, warmup_steps=False),
     TypeError, r"^warmup_steps must be an integer >= 0, got bool False$"),
    ("warmup_steps -1", lambda: nl.BatchRenorm2d(4, warmup_steps=-1),
     ValueError, r"^warmup_steps must be an integer >= 0, got -1$"),
    ("max_len 4.0", lambda: F.lengths_to_mask([1, 2], 4.0),
     TypeError, r"^max_len must be an integer >= 0, got float 4\.0$"),
    ("max_steps 0", lambda: nl.BatchNormLSTMCell(3, 4, 0),
     ValueError, r"^max_steps must be a positive integer, got 0$"),
    ("hidden_size 4.0", lambda: nl.LayerNormGRUCell(3, 4.0),
     TypeError, r"^hidden_size must be a positive integer, got float 4\.0$"),
    ("time step -1", lambda: nl.BatchNormLSTMCell(3, 4, 5)(torch.randn(2, 3), t=-1),
     ValueError, r"^t must be an integer >= 0, got -1$"),
    ("time step 1.0", lambda: nl.BatchNormLSTMCell(3, 4, 5)(torch.randn(2, 3), t=1.0),
     TypeError, r"^t must be an integer >= 0, got float 1\.0$"),
    # real arguments: a string or a bool is a TypeError
    ("eps string", lambda: F.layer_norm(x2, (4,), eps="1e-5"),
     TypeError, r"^eps must be a positive finite number, got str '1e-5'$"),
    ("eps True", lambda: nl.BatchNorm2d(4, eps=True),
     TypeError, r"^eps must be a positive finite number, got bool True$"),
    ("momentum string", lambda: nl.BatchNorm2d(4, momentum="0.1"),
     TypeError, r"^momentum must be a number in \[0, 1\] .* got str '0\.1'$"),
    ("r_max string", lambda: nl.BatchRenorm2d(4, r_max="3"),
     TypeError, r"^r_max must be a number >= 1, got str '3'$"),
    ("activation not a str", lambda: F.group_norm(x4, 2, activation=["relu"]),
     ValueError, r"^activation must be None or one of"),
]

BAD = [
    # --- inputs, at call time (functional) ---
    ("int input", lambda: F.batch_norm(torch.ones(2, 3, dtype=torch.long), None, None,
                                       training=True),
     TypeError, r"input must be a floating-point tensor .* got torch\.int64"),
    ("complex input", lambda: F.layer_norm(torch.ones(2, 3, dtype=torch.complex64), (3,)),
     TypeError, r"input must be a floating-point tensor .* got torch\.complex64"),
    ("not a tensor", lambda: F.group_norm([[1.0, 2.0]], 1),
     TypeError, r"input must be a torch\.Tensor, got list"),
    ("1D batch norm", lambda: F.batch_norm(torch.randn(5), None, None, training=True),
     ValueError, r"batch_norm: expected an input with at least 2 dims, got a 1D input"),
    ("2D instance norm", lambda: F.instance_norm(x2),
     ValueError, r"instance_norm: expected an input with at least 3 dims, got a 2D input"),
    ("one value per channel", lambda: F.batch_norm(torch.randn(1, 8), None, None,
                                                   training=True),
     ValueError, r"Expected more than 1 value per channel when training, got input size \[1, 8\]"),
    ("one spatial element", lambda: F.instance_norm(torch.randn(3, 4, 1)),
     ValueError, r"Expected more than 1 spatial element when training, got input size "
                 r"\[3, 4, 1\]"),
    ("adain one position", lambda: F.adaptive_instance_norm(torch.randn(2, 4, 1),
                                                            torch.randn(2, 4, 5)),
     ValueError, r"Expected more than 1 spatial element in content, got size \[2, 4, 1\]"),
    ("weight channel mismatch", lambda: F.batch_norm(x4, None, None, torch.ones(3),
                                                     training=True),
     ValueError, r"weight must have shape \(4,\) to match the input's 4 channels at "
                 r"channel_axis=1, got shape \(3,\)"),
    ("running stats missing in eval", lambda: F.batch_norm(x4, None, None, training=False),
     ValueError, r"running_mean and running_var are required when training=False"),
    ("only one running stat", lambda: F.batch_norm(x4, torch.zeros(4), None, training=True),
     ValueError, r"running_mean and running_var must be given together"),
    ("running stats wrong size", lambda: F.batch_norm(x4, torch.zeros(5), torch.ones(5)),
     ValueError, r"running_mean must have shape \(4,\) .* got shape \(5,\)"),
    ("normalized_shape mismatch", lambda: F.layer_norm(torch.randn(8, 512), (1024,)),
     ValueError, r"normalized_shape \(1024,\) must match the input's last 1 dims "
                 r"\(channel_axis=-1\), got input of shape \(8, 512\)"),
    ("normalized_shape not ints", lambda: F.layer_norm(x2, "4"),
     TypeError, r"normalized_shape must be a positive integer or a non-empty sequence .* got "
                r"str '4'"),
    ("normalized_shape zero", lambda: F.rms_norm(x2, 0),
     ValueError, r"normalized_shape must be a positive integer .* got 0"),
    ("layer weight shape", lambda: F.layer_norm(x2, (4,), torch.ones(3)),
     ValueError, r"weight must have normalized_shape \(4,\), got shape \(3,\)"),
    ("groups do not divide", lambda: F.group_norm(x4, 3),
     ValueError, r"num_groups must divide the number of channels: num_groups=3 does not divide "
                 r"num_channels=4"),
    ("eps zero", lambda: F.layer_norm(x2, (4,), eps=0.0),
     ValueError, r"eps must be a positive finite number, got 0\.0"),
    ("eps negative", lambda: F.group_norm(x4, 2, eps=-1e-5),
     ValueError, r"eps must be a positive finite number, got -1e-05"),
    ("momentum > 1", lambda: F.batch_norm(x4, None, None, training=True, momentum=1.5),
     ValueError, r"momentum must be a number in \[0, 1\] .*, got 1\.5"),
    ("channel_axis 2", lambda: F.batch_norm(x4, None, None, training=True, channel_axis=2),
     ValueError, r"channel_axis must be one of \(1, -1\), got 2"),
    ("activation unknown", lambda: F.group_norm(x4, 2, activation="tanh"),
     ValueError, r"activation must be None or one of \('relu', 'gelu', 'silu'\), got 'tanh'"),
    ("backend unknown", lambda: F.group_norm(x4, 2, backend="cuda"),
     ValueError, r"backend must be None or one of \('triton', 'masked', 'numba', 'hybrid', "
                 r"'native', 'reference'\), got 'cuda'"),
    ("residual shape", lambda: F.layer_norm(x2, (4,), residual=torch.randn(2, 3)),
     ValueError, r"residual must have the input's shape \(2, 4\), got \(2, 3\)"),
    ("residual int", lambda: F.layer_norm(x2, (4,), residual=torch.ones(2, 4, dtype=torch.int32)),
     TypeError, r"residual must be a floating-point tensor"),
    ("adain channel mismatch", lambda: F.adaptive_instance_norm(x4, torch.randn(2, 3, 3, 3)),
     ValueError, r"style must have the content's 4 channels at channel_axis=1, got 3"),
    ("adain rank mismatch", lambda: F.adaptive_instance_norm(x4, torch.randn(2, 4, 9)),
     ValueError, r"style must have the content's rank 4D, got a 3D style"),
    ("adain batch mismatch", lambda: F.adaptive_instance_norm(x4, torch.randn(3, 4, 3, 3)),
     ValueError, r"style must have the content's batch size 2 or 1, got 3"),
    ("adain int style", lambda: F.adaptive_instance_norm(x4, torch.ones(2, 4, 3, 3,
                                                                       dtype=torch.long)),
     TypeError, r"style must be a floating-point tensor"),
    # --- modules, at call time ---
    ("BatchNorm2d on 3D", lambda: nl.BatchNorm2d(4)(torch.randn(2, 4, 3)),
     ValueError, r"BatchNorm2d: expected 4D input \(got 3D input\)"),
    ("BatchNorm1d on 4D", lambda: nl.BatchNorm1d(4)(x4),
     ValueError, r"BatchNorm1d: expected 2D or 3D input \(got 4D input\)"),
    ("num_features mismatch", lambda: nl.BatchNorm2d(8)(x4),
     ValueError, r"BatchNorm2d: expected 8 channels at channel_axis=1 \(num_features=8\), got "
                 r"input of shape \(2, 4, 3, 3\) with 4"),
    ("instance num_features mismatch", lambda: nl.InstanceNorm2d(3)(x4),
     ValueError, r"InstanceNorm2d: expected 3 channels"),
    ("GroupNorm channels mismatch", lambda: nl.GroupNorm(2, 6)(x4),
     ValueError, r"GroupNorm: expected 6 channels"),
    ("LayerNorm trailing mismatch", lambda: nl.LayerNorm(5)(x4),
     ValueError, r"normalized_shape \(5,\) must match the input's last 1 dims"),
    ("module int input", lambda: nl.GroupNorm(2, 4)(torch.ones(2, 4, dtype=torch.int64)),
     TypeError, r"input must be a floating-point tensor"),
    # --- constructor arguments, at construction ---
    ("num_groups does not divide", lambda: nl.GroupNorm(3, 8),
     ValueError, r"num_groups=3 does not divide num_channels=8"),
    ("num_groups zero", lambda: nl.GroupNorm(0, 8),
     ValueError, r"num_groups must be a positive integer, got 0"),
    ("num_features zero", lambda: nl.BatchNorm2d(0),
     ValueError, r"num_features must be a positive integer, got 0"),
    ("num_features float", lambda: nl.BatchNorm1d(4.0),
     TypeError, r"num_features must be a positive integer, got float 4\.0"),
    ("ctor eps", lambda: nl.LayerNorm(4, eps=0),
     ValueError, r"eps must be a positive finite number, got 0"),
    ("ctor momentum", lambda: nl.BatchNorm2d(4, momentum=-0.1),
     ValueError, r"momentum must be a number in \[0, 1\] \(or None for a cumulative moving "
                 r"average\), got -0\.1"),
    ("ctor channel_axis", lambda: nl.InstanceNorm2d(4, channel_axis=0),
     ValueError, r"channel_axis must be one of \(1, -1\), got 0"),
    ("ctor activation", lambda: nl.RMSNorm(4, activation="swish"),
     ValueError, r"activation must be None or one of"),
    ("ctor normalized_shape", lambda: nl.LayerNorm((4, -1)),
     ValueError, r"normalized_shape must be a positive integer or a non-empty sequence of "
                 r"positive integers, got \(4, -1\)"),
    # --- the pointwise kinds (DyT, Derf) ---
    ("dyt alpha shape", lambda: F.dynamic_tanh(x2, (4,), torch.ones(2)),
     ValueError, r"^alpha must be a one-element tensor of shape \(\) or \(1,\), got shape "
                 r"\(2,\)$"),
    ("dyt alpha 2D", lambda: F.dynamic_tanh(x2, (4,), torch.ones(1, 1)),
     ValueError, r"^alpha must be a one-element tensor of shape \(\) or \(1,\), got shape "
                 r"\(1, 1\)$"),
    ("dyt alpha str", lambda: F.dynamic_tanh(x2, (4,), "0.5"),
     TypeError, r"^alpha must be a one-element tensor or a finite real number, got str '0\.5'$"),
    ("dyt alpha bool", lambda: F.dynamic_tanh(x2, (4,), True),
     TypeError, r"^alpha must be a one-element tensor or a finite real number, got bool True$"),
    ("dyt alpha nan", lambda: F.dynamic_tanh(x2, (4,), float("nan")),
     ValueError, r"^alpha must be a finite number, got nan$"),
    ("dyt alpha int tensor", lambda: F.dynamic_tanh(x2, (4,), torch.ones(1, dtype=torch.long)),
     TypeError, r"^alpha must be a floating-point tensor .* got torch\.int64$"),
    ("dyt alpha float64", lambda: F.dynamic_tanh(x2, (4,), _t(1, dtype=f64)),
     TypeError, r"^alpha must have the input's dtype torch\.float32, got torch\.float64$"),
    ("dyt alpha device", lambda: F.dynamic_tanh(x2, (4,), _t(1, device="meta")),
     ValueError, r"^alpha must be on the input's device cpu, got meta$"),
    ("dyt weight shape", lambda: F.dynamic_tanh(x2, (4,), 0.5, torch.ones(3)),
     ValueError, r"^weight must have normalized_shape \(4,\), got shape \(3,\)$"),
    ("dyt block", lambda: F.dynamic_tanh(x4, (4,), 0.5),
     ValueError, r"^normalized_shape \(4,\) must match the input's last 1 dims "
                 r"\(channel_axis=-1\), got input of shape \(2, 4, 3, 3\)$"),
    ("dyt channel_axis", lambda: F.dynamic_tanh(x4, (4,), 0.5, channel_axis=2),
     ValueError, r"^channel_axis must be one of \(1, -1\), got 2$"),
    ("dyt activation", lambda: F.dynamic_tanh(x2, (4,), 0.5, activation="tanh"),
     ValueError, r"^activation must be None or one of \('relu', 'gelu', 'silu'\), got 'tanh'$"),
    ("dyt residual shape", lambda: F.dynamic_tanh(x2, (4,), 0.5, residual=torch.ones(2, 3)),
     ValueError, r"^residual must have the input's shape \(2, 4\), got \(2, 3\)$"),
    ("dyt backend", lambda: F.dynamic_tanh(x2, (4,), 0.5, backend="masked"),
     ValueError, r"^backend='masked' cannot run this call \(dyt norm, input \(2, 4\) "
                 r"torch\.float32, cpu, no statistics\): no mask given$"),
    ("dyt int input", lambda: F.dynamic_tanh(torch.ones(2, 4, dtype=torch.long), (4,), 0.5),
     TypeError, r"^input must be a floating-point tensor .* got torch\.int64$"),
    ("derf shift shape", lambda: F.derf(x2, (4,), 0.5, torch.zeros(3)),
     ValueError, r"^shift must be a one-element tensor of shape \(\) or \(1,\), got shape "
                 r"\(3,\)$"),
    ("derf shift inf", lambda: F.derf(x2, (4,), 0.5, float("inf")),
     ValueError, r"^shift must be a finite number, got inf$"),
    ("derf bias dtype", lambda: F.derf(x2, (4,), 0.5, 0.0, None, _t(4, dtype=f64)),
     TypeError, r"^bias must have the input's dtype torch\.float32, got torch\.float64$"),
    ("ctor dyt alpha_init", lambda: nl.DynamicTanh(4, alpha_init=float("inf")),
     ValueError, r"^alpha_init must be a finite real number, got inf$"),
    ("ctor derf shift_init", lambda: nl.Derf(4, shift_init="0"),
     TypeError, r"^shift_init must be a finite real number, got str '0'$"),
    ("ctor dyt normalized_shape", lambda: nl.DynamicTanh(0),
     ValueError, r"^normalized_shape must be a positive integer or a non-empty sequence of "
                 r"positive integers, got 0$"),
    ("module dyt input", lambda: nl.DynamicTanh(4)(x4),
     ValueError, r"^normalized_shape \(4,\) must match the input's last 1 dims"),
    *BAD_ARGUMENTS,
    ("registry unknown", lambda: normlab.create_norm_layer("batchy", 4),
     ValueError, r"name must be one of \('none', 'batch', .*\), got 'batchy'"),
]


@pytest.mark.parametrize("call,exc,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_clear_error(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_errors_are_raised_before_any_state_changes():
    m = nl.BatchNorm2d(4)
    with pytest.raises(ValueError):
        m(torch.randn(2, 5, 3, 3))
    assert m.num_batches_tracked.item() == 0
