"""Autograd-aware ops, one per kind (the pointwise DyT and Derf too), over one dispatcher
(``dispatch.normalize``) and its ordered list of backends (Triton kernels, the masked
Function, the numba CPU kernels, the instance-norm hybrid, torch's native kernels, the
reference Function). Inputs are assumed valid: ``normlab.functional`` checks them.
``trace_backends()`` / ``last_backend()`` show which backend ran."""

from normlab.ops.cpu_op import available as cpu_available
from normlab.ops.dispatch import (
    BACKEND_LIST,
    BACKENDS,
    Running,
    last_backend,
    normalize,
    trace_backends,
)
from normlab.ops.kinds import (
    adaptive_instance_norm,
    batch_norm,
    derf,
    dynamic_tanh,
    group_norm,
    instance_norm,
    layer_norm,
    rms_norm,
)
from normlab.ops.reference_op import reference_norm
from normlab.ops.remedies import batch_renorm, ghost_batch_renorm, sync_batch_norm
from normlab.ops.triton_op import available as triton_available
from normlab.ops.triton_op import usable_for as triton_usable

__all__ = ["BACKENDS", "BACKEND_LIST", "Running", "adaptive_instance_norm", "batch_norm",
           "batch_renorm", "cpu_available", "derf", "dynamic_tanh", "ghost_batch_renorm",
           "group_norm", "instance_norm", "last_backend", "layer_norm",
           "normalize", "reference_norm", "rms_norm", "sync_batch_norm", "trace_backends",
           "triton_available", "triton_usable"]
