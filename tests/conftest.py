"""Session set-up shared by every test module."""

import os

# Triton's interpreter runs the kernels on CPU tensors; it must be chosen before the kernel
# module is imported (``@triton.jit`` reads it then). The kernels are imported lazily, on the
# first call with backend="triton", so setting it here is early enough. On a GPU machine set
# TRITON_INTERPRET=0 to run the same tests on the device.
os.environ.setdefault("TRITON_INTERPRET", "1")
