"""Autograd-aware ops, one per kind; the backend (native torch kernels, the reference
Function or the Triton kernels) is chosen per call. Inputs are assumed valid:
``normlab.functional`` checks them."""

from normlab.ops.kinds import (
    BACKENDS,
    adaptive_instance_norm,
    batch_norm,
    group_norm,
    instance_norm,
    layer_norm,
    resolve_backend,
    rms_norm,
)
from normlab.ops.reference_op import reference_norm
from normlab.ops.remedies import batch_renorm, sync_batch_norm
from normlab.ops.triton_op import available as triton_available
from normlab.ops.triton_op import usable_for as triton_usable

__all__ = ["BACKENDS", "adaptive_instance_norm", "batch_norm", "batch_renorm", "group_norm",
           "instance_norm", "layer_norm", "reference_norm", "resolve_backend", "rms_norm",
           "sync_batch_norm", "triton_available", "triton_usable"]
