"""normlab: normalization layers for PyTorch, and a lab that shows what they do.

``normlab.nn`` (modules), ``normlab.functional`` (functions), ``get_norm_layer`` /
``create_norm_layer`` (the registry). See README.md and docs/ARCHITECTURE.md.
"""

from normlab import functional, nn
from normlab._version import __version__
from normlab.functional import lengths_to_mask
from normlab.registry import create_norm_layer, get_norm_layer, list_norm_layers

__all__ = ["__version__", "create_norm_layer", "functional", "get_norm_layer",
           "lengths_to_mask", "list_norm_layers", "nn"]
