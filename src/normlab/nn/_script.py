"""What ``torch.jit.script`` meets in a normlab module: a clear refusal.

normlab's modules are not TorchScript: their validation (``normlab.functional``) and the
backend chosen per call are Python that the TorchScript compiler does not take. Rather than its
internal errors, ``torch.jit.script`` (which calls ``__prepare_scriptable__`` on every module of
the tree before compiling) raises one that says so and names what works: ``torch.compile``, or
``torch.jit.trace`` for a TorchScript graph.
"""

from __future__ import annotations

from normlab import functional as F

__all__ = ["NotScriptable"]


class NotScriptable:
    """Mixed into every normlab module (before ``nn.Module``)."""

    def __prepare_scriptable__(self):
        raise F.script_error(self)
