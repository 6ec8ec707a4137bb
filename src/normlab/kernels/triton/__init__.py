"""Triton kernels (``norm``: the row and column families). Nothing is imported here, so that
``import normlab.kernels.triton`` works without Triton installed."""
