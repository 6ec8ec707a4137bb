"""The backend matrix: a test parametrized over ``normlab.ops.BACKENDS`` runs each case on every
backend that accepts it, so a new backend (a new fast path) is tested by construction.

``on_backend(backend, fn)`` runs ``fn()`` and checks that ``backend`` itself ran it; a backend
that refuses the call (its ``accepts`` rule, a ValueError naming it) or hands it on to another
skips that pairing: the other backend's own run covers it."""

from __future__ import annotations

import pytest

from normlab import ops

BACKENDS = list(ops.BACKENDS)


def on_backend(backend, fn):
    if backend == "triton" and not ops.triton_available():
        pytest.skip("Triton is not installed")
    with ops.trace_backends() as ran:
        try:
            out = fn()
        except ValueError as e:
            if f"backend={backend!r} cannot run this call" in str(e):
                pytest.skip(f"{backend} does not accept this case: {e}")
            raise
    if backend not in ran:
        pytest.skip(f"{backend} hands this case on ({ran})")
    return out
