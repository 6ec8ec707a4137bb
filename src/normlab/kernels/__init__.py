"""Device code only (DESIGN.md): no autograd, no modules. Importing this package never imports
a device toolchain; ``normlab.kernels.triton.norm`` imports Triton and is loaded by
``normlab.ops.triton_op`` only when Triton is installed."""
