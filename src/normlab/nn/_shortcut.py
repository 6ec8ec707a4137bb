"""The modules' shortcut to torch's kernel.

Where the dispatcher runs a module's call on torch's own kernel with nothing around it (no
residual, activation or mask: ``ops.dispatch.Native.direct``), the module keeps the function
that reruns that call (made on the second call in a row with one input layout, so that inputs
whose shape changes every call do not pay for making one each time), and the next calls with
that input layout and the same module state run it directly: the batch counted, torch's
function called, the backend recorded, as the full path does (same outputs bit for bit, same
running statistics and batch count, same ``trace_backends()``), without the validation, plan
and dispatch around it.

Before each use it re-checks everything the full path's validation and backend choice read,
and any difference sends the call through the full path (which validates, raises for bad
input where it always did, dispatches, and leaves a new shortcut when it ran ``native``):

* the input: exactly a ``torch.Tensor`` with the same dtype, shape, strides and device;
* the module's tensors that its forward reads (parameters and buffers, from their dicts): the
  same objects, each with the same dtype, shape, device and ``requires_grad`` (``.data``
  replaced in place is seen);
* whether autograd records the call (grad mode, the input's ``requires_grad``), on which the
  dispatcher's choice depends;
* not under ``torch.compile`` (checked first: the compiled graph traces the full path), a
  torch.func transform or ``torch.jit.trace``.

Setting any attribute of the module to a new value (``.train()``/``.eval()``, ``momentum``,
``eps``, ``backend``, a new parameter...) drops the shortcut, as do ``_apply`` (``.to()``,
``.half()``) and deleting an attribute; pickling and copying never carry it.
"""

from __future__ import annotations

import operator

import torch

__all__ = ["Shortcuts"]

_Tensor = torch.Tensor
_META = operator.attrgetter("dtype", "shape", "device", "requires_grad")
_MISSING = object()


def _make(run, module, x):
    """``use(module, x) -> y or None``: ``run(x)`` when ``x`` and the module's tensors pass
    the checks above against this call's; None otherwise. None (no shortcut) where a tensor the
    forward reads is not in the module's dicts (a parametrization's property)."""
    params, buffers = module._shortcut_params, module._shortcut_buffers
    p, b = module._parameters, module._buffers
    if not all(n in p for n in params) or not all(n in b for n in buffers):
        return None
    tensors = tuple(map(p.get, params)) + tuple(map(b.get, buffers))
    # the objects are kept alive below (``present``): their ids stay theirs
    ids_p, ids_b = tuple(map(id, tensors[:len(params)])), tuple(map(id, tensors[len(params):]))
    present = tuple(t for t in tensors if t is not None)
    metas = tuple(map(_META, present))
    # the affine parameters and the input decide whether autograd records the call
    affine_grad = any(t is not None and t.requires_grad for t in map(p.get, params))
    records = torch.is_grad_enabled() and (affine_grad or x.requires_grad)
    dtype, shape, stride, device = x.dtype, x.shape, x.stride(), x.device
    is_grad_enabled = torch.is_grad_enabled
    functorch = torch._C._are_functorch_transforms_active
    tracing = torch._C._get_tracing_state

    def use(module, x):
        # (a name deleted since drops the shortcut: Shortcuts.__delattr__; so .get's None
        # for a missing name is never taken for a kept tensor)
        if (type(x) is _Tensor and x.dtype is dtype and x.shape == shape
                and x.stride() == stride and x.device == device
                and tuple(map(id, map(module._parameters.get, params))) == ids_p
                and (not buffers or tuple(map(id, map(module._buffers.get, buffers))) == ids_b)
                and tuple(map(_META, present)) == metas
                and (is_grad_enabled() and (affine_grad or x.requires_grad)) is records
                and not functorch() and not tracing()):
            return run(x)
        return None

    return use


class Shortcuts:
    """Mixed into the modules that keep a shortcut (before ``nn.Module``). Their forward is
    ``_call``: ``_shortcut(self, input)`` when set and the call has no residual or mask and is
    not being compiled (None: not taken), else ``_full(input)``, which runs ``_forward(input,
    None, None, kept)`` and keeps the shortcut it leaves (from the second call in a row with
    one input layout). ``_shortcut_params``/``_shortcut_buffers``:
    the names of the tensors the forward reads. The shortcut is dropped when an attribute
    changes, on ``_apply`` and when pickled."""

    _shortcut = None
    _shortcut_params: tuple[str, ...] = ("weight", "bias")
    _shortcut_buffers: tuple[str, ...] = ()

    def _call(self, input, residual, mask):
        """The modules' forward: the shortcut when kept and it takes the call, else the full
        path (``_full``, or ``_forward`` with a residual or mask or under torch.compile)."""
        if residual is None and mask is None and not torch.compiler.is_compiling():
            use = self._shortcut
            if use is not None:
                y = use(self, input)
                if y is not None:
                    return y
            return self._full(input)
        return self._forward(input, residual, mask)

    def _full(self, input):
        # a shortcut is made on the second call in a row with the same input layout, so that
        # inputs whose shape changes every call (sequences of varying length) do not pay for
        # making one each time (~10 us); the kept one stays until another is made
        d = self.__dict__
        if type(input) is not _Tensor:
            return self._forward(input, None, None)
        layout = (input.shape, input.stride(), input.dtype, input.device)
        if d.get("_shortcut_layout") != layout:
            d["_shortcut_layout"] = layout
            return self._forward(input, None, None)
        kept = []
        y = self._forward(input, None, None, kept)
        if kept:
            d["_shortcut"] = _make(kept[0], self, input)
        return y

    def __setattr__(self, name, value):
        d = self.__dict__
        if d.get("_shortcut") is not None and d.get(name, _MISSING) is not value:
            d["_shortcut"] = None
        super().__setattr__(name, value)

    def __delattr__(self, name):
        self.__dict__["_shortcut"] = None
        super().__delattr__(name)

    def _apply(self, fn, recurse=True):
        self.__dict__["_shortcut"] = None
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_shortcut", None)
        state.pop("_shortcut_layout", None)
        return state
