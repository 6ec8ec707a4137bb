"""Bad input is a tested contract: each row is (call, exception type, message pattern)."""

from __future__ import annotations

import pytest
import torch

import normlab
import normlab.functional as F
import normlab.nn as nl

x4 = torch.randn(2, 4, 3, 3)
x2 = torch.randn(2, 4)

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
    ("one value per group", lambda: F.group_norm(torch.randn(3, 4), 4),
     ValueError, r"Expected more than 1 value per group .* got input size \[3, 4\] with "
                 r"num_groups=4"),
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
     ValueError, r"normalized_shape must be a positive integer or a non-empty sequence"),
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
     ValueError, r"momentum must be a number in \[0, 1\], got 1\.5"),
    ("channel_axis 2", lambda: F.batch_norm(x4, None, None, training=True, channel_axis=2),
     ValueError, r"channel_axis must be one of \(1, -1\), got 2"),
    ("activation unknown", lambda: F.group_norm(x4, 2, activation="tanh"),
     ValueError, r"activation must be None or one of \('relu', 'gelu', 'silu'\), got 'tanh'"),
    ("backend unknown", lambda: F.group_norm(x4, 2, backend="cuda"),
     ValueError, r"backend must be None or one of \('native', 'reference', 'triton'\), got "
                 r"'cuda'"),
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
     ValueError, r"num_features must be a positive integer, got 4\.0"),
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
