"""Model surgery: each function returns a new module tree and never changes its input.

``to_normlab`` (torch.nn norms -> normlab, exact state), ``swap_norms`` (any norm -> another
kind from the registry), ``insert_norms`` (Linear/Conv -> Norm -> Act in Sequential trees),
``remove_norms`` (the no-normalization baseline), ``move_norms`` (a norm to the other side of
its activation), ``fold_batch_norm`` (eval-mode batch norm
into the layer before it), ``convert_sync_batchnorm``, ``freeze_batch_norm`` and
``precise_batch_norm`` (population statistics by true averaging over a loader).
"""

from normlab.surgery.adapters import ActThenNorm, NormAct, NormInfo, register_adapter
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
from normlab.surgery.placement import PlacementReport, move_norms
from normlab.surgery.precise import PreciseBNReport, precise_batch_norm

__all__ = ["ActThenNorm", "FoldReport", "InsertReport", "NormAct", "NormInfo", "Passthrough",
           "PlacementReport", "PreciseBNReport", "SurgeryError", "SurgeryReport",
           "SurgeryWarning", "convert_sync_batchnorm", "fold_batch_norm", "freeze_batch_norm",
           "insert_norms", "is_norm", "move_norms", "precise_batch_norm", "register_adapter",
           "remove_norms", "swap_norms", "to_normlab"]
