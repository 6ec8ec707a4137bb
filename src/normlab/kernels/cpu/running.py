"""The running statistics' update of a batch norm call on the numba backend (its one row of
``C`` statistics), compiled by numba: one call, where numpy takes seven ufunc calls and torch
five ops (a few microseconds each: most of the Python around a small numba call; see
``normlab.ops.cpu_op.update_row``)."""

from __future__ import annotations

from numba import njit

__all__ = ["update_row"]


@njit(cache=True, nogil=True)
def update_row(running_mean, running_var, mean, var, keep, factor, unbias):
    """running = keep * running + factor * batch value, the variance made unbiased first; the
    scalars in the arrays' dtype, each product rounded to it (as torch's ops do, except that
    their add may fuse a multiply-add: the last bit can differ)."""
    for i in range(running_mean.shape[0]):
        running_mean[i] = running_mean[i] * keep + mean[i] * factor
        running_var[i] = running_var[i] * keep + (var[i] * unbias) * factor
