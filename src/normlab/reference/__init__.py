"""Readable eager math for every kind: forward -> (y, cache), backward(dy, cache)."""

from normlab.reference.core import (
    ACTIVATIONS,
    activation_grad,
    apply_activation,
    backward,
    forward,
    like_input,
    masked_forward,
    stat_dtype,
)

__all__ = ["ACTIVATIONS", "activation_grad", "apply_activation", "backward", "forward",
           "like_input", "masked_forward", "stat_dtype"]
