"""Model surgery: each function returns a new module tree and never changes its input.

``to_normlab`` (torch.nn norms -> normlab, exact state), ``swap_norms`` (any norm -> another
kind from the registry), ``insert_norms`` (Linear/Conv -> Norm -> Act in Sequential trees),
``remove_norms`` (the no-normalization baseline), ``fold_batch_norm`` (eval-mode batch norm
into the layer before it), ``convert_sync_batchnorm``, ``freeze_batch_norm`` and
``precise_batch_norm`` (population statistics by true averaging over a loader).
"""

from normlab.surgery.adapters import NormAct, NormInfo, register_adapter
from normlab.surgery.core import (
    InsertReport,
    Passthrough,
    SurgeryError,
    SurgeryReport,
    SurgeryWarning,
    convert_sync_batchnorm,
    freeze_batch_norm,
    insert_norms,
    is_norm,
    remove_norms,
    swap_norms,
    to_normlab,
)
from normlab.surgery.fold import FoldReport, fold_batch_norm
from normlab.surgery.precise import PreciseBNReport, precise_batch_norm

__all__ = ["FoldReport", "InsertReport", "NormAct", "NormInfo", "Passthrough", "PreciseBNReport",
           "SurgeryError", "SurgeryReport", "SurgeryWarning", "convert_sync_batchnorm",
           "fold_batch_norm", "freeze_batch_norm", "insert_norms", "is_norm",
           "precise_batch_norm", "register_adapter", "remove_norms", "swap_norms", "to_normlab"]
