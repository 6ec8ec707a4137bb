"""normlab: normalization layers for PyTorch, and a lab that shows what they do.

``normlab.nn`` (modules), ``normlab.functional`` (functions), ``get_norm_layer`` /
``create_norm_layer`` (the registry), ``explain(kind)`` (the books-on-a-shelf figure, imported
from ``normlab.report`` on first use, so ``import normlab`` imports no matplotlib). See
README.md, the documentation site (docs/, ``scripts/docs.sh``) and docs/ARCHITECTURE.md.
"""

from normlab import functional, nn
from normlab._version import __version__
from normlab.functional import lengths_to_mask
from normlab.registry import create_norm_layer, get_norm_layer, list_norm_layers

__all__ = ["__version__", "create_norm_layer", "explain", "functional", "get_norm_layer",
           "lengths_to_mask", "list_norm_layers", "nn"]


def __getattr__(name: str):
    # the root package sits above every layer (pyproject's contracts), so it may reach the
    # report; lazily, because the report needs matplotlib (the lab extra)
    if name == "explain":
        from normlab.report.explain import explain

        return explain
    raise AttributeError(f"module 'normlab' has no attribute {name!r}")
