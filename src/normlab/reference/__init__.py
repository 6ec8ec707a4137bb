"""Readable eager math for every kind: forward -> (y, cache), backward(dy, cache); the
pointwise kinds (DyT, Derf): ``pointwise_forward`` with autograd's backward."""

from normlab.reference.core import (
    ACTIVATIONS,
    activation_grad,
    apply_activation,
    backward,
    forward,
    like_input,
    masked_forward,
    pointwise_forward,
    squash,
    squash_grad,
    stat_dtype,
)

__all__ = ["ACTIVATIONS", "activation_grad", "apply_activation", "backward", "forward",
           "like_input", "masked_forward", "pointwise_forward", "squash", "squash_grad",
           "stat_dtype"]
