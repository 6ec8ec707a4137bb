"""normlab: normalization layers for PyTorch, and a lab that shows what they do.

``normlab.nn`` (modules), ``normlab.functional`` (functions), ``get_norm_layer`` /
``create_norm_layer`` (the registry), ``study`` (the lab on your own model and data: which
normalization to use), ``explain(kind)`` (the books-on-a-shelf figure, imported
from ``normlab.report`` on first use, so ``import normlab`` imports no matplotlib). See
README.md, the documentation site (docs/, ``scripts/docs.sh``) and docs/ARCHITECTURE.md.
"""

from normlab import functional, nn
from normlab._version import __version__
from normlab.functional import lengths_to_mask
from normlab.registry import create_norm_layer, get_norm_layer, list_norm_layers

__all__ = ["__version__", "create_norm_layer", "explain", "functional", "get_norm_layer",
           "lengths_to_mask", "list_norm_layers", "nn", "study"]


def study(model, data, out="normlab-study", **kwargs) -> dict:
    """``normlab study`` from Python: train ``model`` (an import path ``pkg.mod:factory`` or
    the factory itself) as given and with other normalizations on ``data`` (a factory of
    ``(train, test)``), and return ``{"rows", "advice", "counts", "settings"}``; the folder
    ``out`` holds the rows (a rerun resumes) and the page. ``kwargs``: ``norms``,
    ``batch_sizes``, ``lrs``, ``seeds``, ``steps``, ``workers``, ``device``, ... as in
    :func:`normlab.lab.userstudy.plan_user_study` and :func:`~normlab.lab.userstudy.run_study`.
    A factory defined in a notebook runs in this process (``workers=1``, the default then)."""
    from normlab.lab.userstudy import run_study
    from normlab.report import render_report

    kwargs.setdefault("render", render_report)
    return run_study(model, data, out, **kwargs)


def __getattr__(name: str):
    # the root package sits above every layer (pyproject's contracts), so it may reach the
    # report; lazily, because the report needs matplotlib (the lab extra)
    if name == "explain":
        from normlab.report.explain import explain

        return explain
    raise AttributeError(f"module 'normlab' has no attribute {name!r}")
