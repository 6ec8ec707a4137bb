"""Move normalization layers to the other side of their activation: ``Norm -> Act`` becomes
``Act -> Norm`` (``placement="after_activation"``) or back (``"before_activation"``).

Two shapes of pair are found:

* **fused**: a layer that applies its own activation after the norm (timm's BatchNormAct2d and
  the other norm+act classes, a normlab layer with ``activation=``, a :class:`NormAct`). The
  activation is taken out of a copy of the layer (``act = Identity`` / ``activation = None``),
  the split is checked on a float64 probe (``act(norm(x))`` equals the original layer, eval and
  train), and the layer becomes ``ActThenNorm(act, norm)``.
* **separate**: a norm module whose output goes only to an activation (through ``nn.Identity``
  modules at most, as timm's ``drop_block``), found in the model's forward by torch.fx
  (modules that hold no norm are kept whole, so their own control flow is untouched). The norm
  becomes ``ActThenNorm(copy of act, norm)`` and the activation's call is dropped. When each
  such activation module is called only at that place, the module tree is edited (the model
  keeps its class: the activation module becomes ``nn.Identity``); when one is shared (e.g.
  torchvision's ResNet calls one ``relu`` after the norm and after the residual add) or is a
  function (``F.relu(x)``), the result is the traced ``torch.fx.GraphModule``. When torch.fx
  cannot trace the whole model (data-dependent control flow, as in Hugging Face's models), each
  submodule holding norms is traced on its own, top down, and its pairs moved by editing the
  module tree (a pair that would need a traced copy is left, with the reason); a norm whose
  parent does not trace either falls back to adjacent (norm, activation) children of an
  ``nn.Sequential``.

Back (``"before_activation"``): an ``ActThenNorm`` and an ``Act -> Norm`` pair become
``NormAct(norm, act)``. The moved activation is a copy that never works in place (in place it
would overwrite the norm's input, which other layers may read). Every pair that is not moved is
named with the reason (its output goes to a residual add, a convolution, several layers, an
activation with parameters such as PReLU, ...).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from normlab.surgery import adapters as ad
from normlab.surgery.core import (
    _ACTIVATIONS,
    Passthrough,
    SurgeryError,
    _candidates,
    _check_model,
    _replace,
)
from normlab.surgery.fold import _Tracer

__all__ = ["PlacementReport", "TracedModel", "move_norms"]

PLACEMENTS = ("after_activation", "before_activation")


@dataclass
class PlacementReport:
    """What ``move_norms`` did: ``moved`` as (norm path, activation it now follows or precedes),
    ``already`` as (norm path, note) for norms already on the asked side, ``left`` as (norm
    path, class name, reason); ``method``: "module" (the model's own class, edited),
    "fx" (a traced GraphModule) or "submodules" (torch.fx could not trace the whole model,
    ``trace_error``: its submodules traced one by one, the model's own class edited)."""

    placement: str = "after_activation"
    moved: list[tuple[str, str]] = field(default_factory=list)
    already: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)
    method: str = "module"
    trace_error: str | None = None

    def __str__(self) -> str:
        side = "after" if self.placement == "after_activation" else "before"
        lines = [f"moved {p} {side} {a}" for p, a in self.moved]
        lines += [f"already {side} its activation: {p} ({a})" for p, a in self.already]
        lines += [f"left {p} ({c}): {why}" for p, c, why in self.left]
        if self.trace_error:
            lines.append(f"(torch.fx could not trace the whole model: {self.trace_error}; "
                         "its submodules were traced one by one)")
        return "\n".join(lines) or "no normalization layer found"


# --------------------------------------------------------------------------------------------
# activations: modules and functions, as a fresh module that does not work in place


def _is_act_module(m: nn.Module) -> bool:
    return type(m) in _ACTIVATIONS or type(m).__module__ in (
        "timm.layers.activations", "timm.layers.activations_me")


def _stateful(act: nn.Module) -> bool:
    """An activation with parameters or buffers (PReLU) is not moved: the moved copy would
    change the state dict's keys and, where the module is shared, untie its parameters."""
    return any(True for _ in act.parameters()) or any(True for _ in act.buffers())


_STATEFUL = ("an activation with parameters stays where it is (a moved copy would change "
             "the state dict and untie a shared one)")


def _fresh(act: nn.Module) -> nn.Module:
    act = copy.deepcopy(act)
    if getattr(act, "inplace", False) is True:
        act.inplace = False
    return act


# function -> (module class, names of its arguments after the input that the module takes;
# "inplace" is dropped)
_ACT_FUNCS = {
    F.relu: (nn.ReLU, ("inplace",)), torch.relu: (nn.ReLU, ()), torch.relu_: (nn.ReLU, ()),
    F.relu6: (nn.ReLU6, ("inplace",)), F.gelu: (nn.GELU, ("approximate",)),
    F.silu: (nn.SiLU, ("inplace",)), F.mish: (nn.Mish, ("inplace",)),
    F.hardswish: (nn.Hardswish, ("inplace",)), torch.sigmoid: (nn.Sigmoid, ()),
    F.sigmoid: (nn.Sigmoid, ()), torch.tanh: (nn.Tanh, ()), F.tanh: (nn.Tanh, ()),
    F.leaky_relu: (nn.LeakyReLU, ("negative_slope", "inplace")),
    F.elu: (nn.ELU, ("alpha", "inplace")),
}
_ACT_METHODS = {"relu": nn.ReLU, "relu_": nn.ReLU, "sigmoid": nn.Sigmoid,
                "sigmoid_": nn.Sigmoid, "tanh": nn.Tanh, "tanh_": nn.Tanh}


def _act_of(node: fx.Node, modules: dict) -> tuple[nn.Module | None, str]:
    """(a fresh activation module computing ``node``, its description), or (None, what the node
    is) when ``node`` is not an activation of its first input alone."""
    if node.op == "call_module":
        m = modules.get(node.target)
        desc = f"{_prefix(modules)}{node.target} ({type(m).__qualname__})"
        if _is_act_module(m) and len(node.args) == 1 and not node.kwargs and not _stateful(m):
            return _fresh(m), desc
        return None, desc
    name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method" and node.target in _ACT_METHODS:
        if len(node.args) == 1 and not node.kwargs:
            return _ACT_METHODS[node.target](), f"{name}() (a tensor method)"
    if node.op == "call_function" and node.target in _ACT_FUNCS:
        cls, names = _ACT_FUNCS[node.target]
        extra = dict(zip(names, node.args[1:], strict=False))
        if len(node.args) - 1 <= len(names):
            extra.update(node.kwargs)
            if set(extra) <= set(names) and not any(isinstance(v, fx.Node)
                                                      for v in extra.values()):
                extra.pop("inplace", None)
                return cls(**extra), f"{name}() (a function)"
    return None, _describe(node, modules)


def _describe(node, modules) -> str:
    if not isinstance(node, fx.Node):
        return "not a tensor from a layer"
    if node.op == "placeholder":
        return "the model's input"
    if node.op == "output":
        return "the model's output"
    if node.op == "call_module":
        return f"{_prefix(modules)}{node.target} ({type(modules.get(node.target)).__qualname__})"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{name}()"


class _Modules(dict):
    """``named_modules()`` of a traced submodule, with its path in the model (``prefix``,
    ending in "."), so the report names modules by their paths in the whole model."""

    def __init__(self, root: nn.Module, prefix: str = ""):
        super().__init__(root.named_modules())
        self.prefix = prefix


def _prefix(modules: dict) -> str:
    return getattr(modules, "prefix", "")


# --------------------------------------------------------------------------------------------
# fused pairs: the activation inside the layer


def _split_fused(m: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(norm without its activation, the activation) for a layer applying its own activation
    after the norm; None for a plain norm; ``ad.Refused`` when it cannot be split."""
    if isinstance(m, ad.NormAct):
        if isinstance(m.act, nn.Identity):
            return None
        norm = copy.deepcopy(m)
        norm.act = nn.Identity().train(m.training)
        return (norm if not isinstance(m.drop, nn.Identity) else norm.norm), _fresh(m.act)
    info = ad.read(m)
    if info.act is None and info.activation is None:
        return None
    if info.act is not None and info.activation is not None:
        raise ad.Refused("it applies a fused activation and a separate act module")
    norm = copy.deepcopy(m)
    if info.activation is not None:  # normlab's fused activation, by its one definition
        norm.activation = None
        act = Passthrough(info.activation)
        act.training = m.training
        return norm, act
    if getattr(m, "act", None) is not info.act:
        raise ad.Refused("its activation is not its 'act' attribute")
    norm.act = nn.Identity().train(m.training)
    return norm, _fresh(info.act)


def _check_split(m: nn.Module, make_norm, act: nn.Module) -> str | None:
    """The split layer against the original on float64 probes (eval and train, running
    statistics after the step): ``act(norm(x))`` must equal ``m(x)``."""
    try:
        info = ad.read(m)
        shape = ad.probe_shape(info)
        upcast, eps = info.upcast, info.eps
    except ad.Refused as exc:
        return str(exc)
    return ad.probe(m, lambda ref: ad.NormAct(make_norm(ref), None, copy.deepcopy(act)),
                    shape, upcast=upcast, eps=eps)


# --------------------------------------------------------------------------------------------
# separate pairs: found in the traced forward


class _PairTracer(_Tracer):
    """fold's tracer (norms and timm's untraceable modules are leaves), and every module
    holding no norm is a leaf too: only the containers of norms are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname and not any(ad.looks_like_norm(c) for c in m.modules()):
            return True
        return super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, training: bool) -> fx.Graph:
    """The forward graph of a copy of ``model`` in train or eval mode (the model's own modes,
    which may differ between layers, are not touched)."""
    return _PairTracer().trace(copy.deepcopy(model).train(training))


def _calls(graph: fx.Graph) -> dict[str, int]:
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    return calls


def _is_identity(node, modules) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_module"
            and type(modules.get(node.target)) is nn.Identity and len(node.args) == 1
            and not node.kwargs)


def _partner(node: fx.Node, modules: dict, placement: str):
    """(the activation node on ``placement``'s side of norm ``node``, None) -- the one node its
    output goes to alone (``after_activation``), or the node whose output goes to it alone
    (``before_activation``), through ``nn.Identity`` modules -- or (None, why not)."""
    if placement == "after_activation":
        cur = node
        while len(cur.users) == 1 and _is_identity(next(iter(cur.users)), modules):
            cur = next(iter(cur.users))
        if len(cur.users) != 1:
            return None, (f"its output goes to {len(cur.users)} places ("
                          + ", ".join(_describe(u, modules) for u in cur.users)
                          + "), not to one activation")
        act_node = next(iter(cur.users))
        if act_node.args[:1] != (cur,):  # e.g. add(shortcut, norm(x))
            return None, f"followed by {_describe(act_node, modules)}, not an activation"
    else:
        act_node = node.args[0] if node.args else None
        while _is_identity(act_node, modules) and len(act_node.users) == 1:
            act_node = act_node.args[0]
        if not isinstance(act_node, fx.Node):
            return None, "its input is not a tensor from a layer"
        if len(act_node.users) != 1:
            return None, (f"its input is {_describe(act_node, modules)}, whose output goes "
                          "elsewhere too")
    act, desc = _act_of(act_node, modules)
    if act is None:
        side = "followed by" if placement == "after_activation" else "its input is"
        m = modules.get(act_node.target) if act_node.op == "call_module" else None
        if isinstance(m, nn.Module) and _is_act_module(m) and _stateful(m):
            return None, f"{side} {desc}: {_STATEFUL}"
        return None, f"{side} {desc}, not an activation"
    return act_node, None


def _pairs(graph: fx.Graph, modules: dict, todo: dict, placement: str, left: dict,
           already: dict | None = None) -> dict:
    """{norm path: (activation node, fresh act module, description)} of the pairs to move in
    ``graph``; a reason in ``left[path]`` for every other norm of ``todo`` it calls, or a note
    in ``already[path]`` for one whose activation is on the asked side already."""
    other = "before_activation" if placement == "after_activation" else "after_activation"
    pairs, seen = {}, set()
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in todo:
            continue
        path = node.target
        if path in seen:
            left[path] = "called more than once in the forward"
            pairs.pop(path, None)
            if already is not None:
                already.pop(path, None)
            continue
        seen.add(path)
        if len(node.args) != 1 or node.kwargs:
            left[path] = "called with more than its input (a residual)"
            continue
        act_node, why = _partner(node, modules, placement)
        if act_node is None:
            there, _ = _partner(node, modules, other)
            if there is not None and already is not None:
                already[path] = ("after " if other == "before_activation" else "before ") + \
                    _act_of(there, modules)[1]
            else:
                left[path] = why
            continue
        act, desc = _act_of(act_node, modules)
        pairs[path] = (act_node, act, desc)
    return pairs


def _wrap(norm: nn.Module, act: nn.Module, placement: str) -> nn.Module:
    return ad.ActThenNorm(act, norm) if placement == "after_activation" else \
        ad.NormAct(norm, None, act)


_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
          "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def _keep_all(gm: fx.GraphModule, root: nn.Module, memo: dict | None = None) -> None:
    """Put into ``gm`` what torch.fx's GraphModule drops (it keeps only what the forward
    reads): ``root``'s whole module tree, its parameters and buffers the forward does not use
    (an unused head, a step counter) and its forward hooks; so the state dict has the
    original's keys and loads both ways. With ``memo``: deep copies of them (a deepcopy)."""
    same = (lambda v: v) if memo is None else (lambda v: copy.deepcopy(v, memo))
    for name, child in root._modules.items():
        setattr(gm, name, same(child))
    for name, param in root._parameters.items():
        if name not in gm._parameters:
            gm.register_parameter(name, same(param))
    for name, buf in root._buffers.items():
        if name not in gm._buffers:
            gm.register_buffer(name, same(buf))
        if name in root._non_persistent_buffers_set:
            gm._non_persistent_buffers_set.add(name)
    for hooks in _HOOKS:
        if hasattr(root, hooks):
            setattr(gm, hooks, copy.copy(getattr(root, hooks)))


class TracedModel(fx.GraphModule):
    """The traced copy ``move_norms`` returns when an activation it moved is shared or a
    function: a ``torch.fx.GraphModule`` that keeps the whole module tree, parameters, buffers
    and forward hooks of the model it was traced from (a plain GraphModule keeps only what the
    forward reads, and loses the rest again when deep-copied)."""

    def __init__(self, root: nn.Module, graph: fx.Graph):
        super().__init__(root, graph)
        _keep_all(self, root)

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        _keep_all(res, self, memo)
        return res

    def __reduce__(self):  # torch.save(model): GraphModule rebuilds every buffer persistent
        return _rebuilt, (super().__reduce__(), sorted(self._non_persistent_buffers_set))


def _rebuilt(reduced, non_persistent) -> fx.GraphModule:
    fn, args = reduced[:2]
    gm = fn(*args)
    gm._non_persistent_buffers_set.update(n for n in non_persistent if n in gm._buffers)
    return gm


def _move_traced(new: nn.Module, todo: dict, placement: str, report: PlacementReport,
                 prefix: str = "", shared: frozenset = frozenset(), graphs=None):
    """Move the separate pairs of ``todo`` ({path: norm}) found by torch.fx; the new model.

    ``prefix`` set: ``new`` is a submodule (at that path, ending in ".") of a model torch.fx
    cannot trace whole; the report gets whole-model paths and only the module tree is edited
    (a traced copy of a submodule would change its class under its parent): a pair that needs
    one, or whose activation module is also reachable from outside ``new`` (in ``shared``, by
    id), is left with the reason."""
    left: dict[str, str] = {}
    already: dict[str, str] = {}
    modules = _Modules(new, prefix)
    g_train, g_eval = graphs or (_trace(new, True), _trace(new, False))
    pairs = _pairs(g_train, modules, todo, placement, left, already)
    for path, (a, act, _) in pairs.items():
        if a.op != "call_module":  # made from a function or a tensor method: the norm's mode
            act.training = todo[path].training
    calls = _calls(g_train)
    in_tree = all(a.op == "call_module" and calls[a.target] == 1 for a, _, _ in pairs.values())
    if g_train.python_code("self").src != g_eval.python_code("self").src or prefix:
        # the forward differs with the mode (a traced copy would fix one), or this is a part
        # of the model: the module tree may still be edited where the eval forward holds the
        # same pair, its activation called there once too
        pairs_eval, calls_eval = _pairs(g_eval, modules, todo, placement, {}), _calls(g_eval)
        for path, (a, _, _) in list(pairs.items()):
            b = pairs_eval.get(path, (None,))[0]
            if not (a.op == "call_module" and calls[a.target] == 1 and b is not None
                    and b.op == "call_module" and b.target == a.target
                    and calls_eval[a.target] == 1):
                left[path] = ((f"moving it needs a traced copy of {prefix[:-1]} (its "
                               "activation is a function or called more than once), and "
                               "torch.fx cannot trace the whole model") if prefix else
                              ("moving it needs a traced copy of the forward, and the forward "
                               "differs in train and eval mode (a traced copy fixes one)"))
                del pairs[path]
            elif id(modules[a.target]) in shared:
                left[path] = (f"its activation {prefix}{a.target} is also reachable from "
                              f"outside {prefix[:-1]}, which torch.fx traced on its own")
                del pairs[path]
        in_tree = True
    for path in todo:
        if path not in pairs and path not in left and path not in already:
            left[path] = ("not called as a module in the traced forward (inside a module "
                          "torch.fx keeps whole, or in a branch it did not take)")
    for path, note in already.items():
        report.already.append((prefix + path, note))
    for path, why in left.items():
        report.left.append((prefix + path, type(todo[path]).__qualname__, why))
    if not pairs:
        return new
    if in_tree:
        report.method = "module" if not prefix else report.method
        for path, (a, act, desc) in pairs.items():
            _replace(new, path, _wrap(todo[path], act, placement))
            _replace(new, a.target, nn.Identity())
            report.moved.append((prefix + path, desc))
        return new
    report.method = "fx"
    gm = TracedModel(new, g_train)  # the modules of ``new`` (their own modes), by reference
    for name, value in vars(new).items():  # plain attributes a leaf may read at run time
        if not name.startswith("_") and name != "training" and not hasattr(gm, name):
            setattr(gm, name, value)
    for path, (a, act, desc) in pairs.items():
        _replace(gm, path, _wrap(todo[path], act, placement))
        a.replace_all_uses_with(a.args[0])
        gm.graph.erase_node(a)
        report.moved.append((path, desc))
    gm.graph.lint()
    gm.recompile()
    gm.training = new.training
    return gm


def _move_parts(new: nn.Module, todo: dict, placement: str, report: PlacementReport):
    """torch.fx could not trace the whole model: each submodule holding norms is traced on its
    own, from the top down (on a norm's path from the model, the first module that traces is
    the one whose forward is searched; HF transformers' ResNet: each ResNetConvLayer), its
    pairs moved by editing the module tree; a norm whose parent does not trace either goes to
    the Sequential fallback (its parent an ``nn.Sequential``) or is left."""
    report.method = "submodules"
    counts: dict[int, int] = {}
    for _, m in new.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    untraced: dict[str, nn.Module] = {}

    def visit(path: str, mod: nn.Module) -> None:
        for name, child in mod.named_children():
            cpath = f"{path}.{name}" if path else name
            if cpath in todo:  # a norm whose parent torch.fx cannot trace
                untraced[cpath] = todo[cpath]
                continue
            sub = {p[len(cpath) + 1:]: n for p, n in todo.items() if p.startswith(cpath + ".")}
            if not sub:
                continue
            try:
                graphs = _trace(child, True), _trace(child, False)
            except Exception:  # torch.fx cannot trace it (any reason): try its children
                visit(cpath, child)
                continue
            inside: dict[int, int] = {}
            for _, m in child.named_modules(remove_duplicate=False):
                inside[id(m)] = inside.get(id(m), 0) + 1
            shared = frozenset(i for i, c in inside.items() if counts[i] > c)
            _move_traced(child, sub, placement, report, cpath + ".", shared, graphs)

    visit("", new)
    if untraced:
        _move_sequential(new, untraced, placement, report)
    return new


def _move_sequential(new: nn.Module, todo: dict, placement: str, report: PlacementReport):
    """The fallback: (norm, [Identity...], activation) children of an ``nn.Sequential`` (or
    (activation, [Identity...], norm) for ``before_activation``)."""
    moved, already = set(), set()

    stateful: dict[str, str] = {}

    def act_at(seq, names, i, step):  # the index of the activation next to child i, or None
        j = i + step
        while 0 <= j < len(names) and type(seq._modules[names[j]]) is nn.Identity:
            j += step
        ok = 0 <= j < len(names) and _is_act_module(seq._modules[names[j]])
        if ok and _stateful(seq._modules[names[j]]):
            where = f"{seq_path}.{names[j]}" if seq_path else names[j]
            stateful[f"{seq_path}.{names[i]}" if seq_path else names[i]] = (
                f"next to {where} ({type(seq._modules[names[j]]).__qualname__}): {_STATEFUL}")
            return None
        return j if ok else None

    for seq_path, seq in list(new.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for i, name in enumerate(names):
            path = f"{seq_path}.{name}" if seq_path else name
            if path not in todo or path in moved or path in already:
                continue
            step = 1 if placement == "after_activation" else -1
            j = act_at(seq, names, i, step)
            if j is None:
                k = act_at(seq, names, i, -step)
                if k is not None:
                    already.add(path)
                    where = f"{seq_path}.{names[k]}" if seq_path else names[k]
                    cls = type(seq._modules[names[k]]).__qualname__
                    report.already.append((path, f"{'after' if step > 0 else 'before'} "
                                           f"{where} ({cls})"))
                continue
            act = seq._modules[names[j]]
            _replace(new, path, _wrap(todo[path], _fresh(act), placement))
            _replace(new, f"{seq_path}.{names[j]}" if seq_path else names[j], nn.Identity())
            moved.add(path)
            report.moved.append((path, f"{seq_path}.{names[j]} ({type(act).__qualname__})"
                                 if seq_path else f"{names[j]} ({type(act).__qualname__})"))
    for path, m in todo.items():
        if path not in moved and path not in already:
            side = "followed by" if placement == "after_activation" else "preceded by"
            report.left.append((path, type(m).__qualname__, "torch.fx could not trace the "
                                "model, and " + (stateful[path] if path in stateful else
                                                 f"it is not {side} an activation in an "
                                                 "nn.Sequential")))
    return new


# --------------------------------------------------------------------------------------------
# the surgery


def move_norms(model: nn.Module, placement: str = "after_activation", *, filter=None,
               example_inputs=None) -> tuple[nn.Module, PlacementReport]:
    """A copy of ``model`` with each normalization layer (those for which ``filter(path,
    module)`` is true) that an activation follows moved after it (``placement=
    "after_activation"``: ``Norm -> Act`` becomes ``Act -> Norm``), or each one that follows an
    activation moved before it (``"before_activation"``). The norm keeps its parameters and
    statistics (they now see the activation's output); the activation is a copy that does not
    work in place.

    Fused norm+act layers (timm's ``BatchNormAct2d``, normlab's ``activation=``) are split and
    checked on a float64 probe; separate pairs are found by torch.fx in the forward (see the
    module's docstring for the shapes it moves and when the result is a GraphModule). Returns
    ``(new model, PlacementReport)``: every norm moved, already there, or left with the reason.
    ``example_inputs`` (a tensor or tuple): also run the new model on it (eval and train) and
    raise :class:`SurgeryError` unless its output shape is the original's and every moved layer
    is called. The input model is not changed."""
    if placement not in PLACEMENTS:
        raise SurgeryError(f"placement must be 'after_activation' or 'before_activation', got "
                           f"{placement!r}")
    if filter is not None and not callable(filter):
        raise SurgeryError(f"filter must be a callable (path, module) -> bool, got {filter!r}")
    new = copy.deepcopy(model)
    report = PlacementReport(placement=placement)
    if ad.looks_like_norm(new):
        raise SurgeryError("move_norms needs a model holding norm layers and activations, got "
                           f"a norm layer itself ({type(new).__qualname__})")
    separate: dict[str, nn.Module] = {}
    for path, m in _candidates(new, filter):
        name = type(m).__qualname__
        if isinstance(m, ad.ActThenNorm):
            if placement == "after_activation":
                report.already.append((path, f"after {type(m.act).__qualname__}"))
            else:
                _replace(new, path, ad.NormAct(m.norm, None, m.act))
                report.moved.append((path, f"{type(m.act).__qualname__} (inside the layer)"))
            continue
        try:
            split = _split_fused(m)
        except ad.Refused as exc:
            report.left.append((path, name, f"surgery cannot read it: {exc}"))
            continue
        if split is None:
            separate[path] = m
            continue
        if placement == "before_activation":
            report.already.append((path, f"before its fused {type(split[1]).__qualname__}"))
            continue
        norm, act = split
        why = _check_split(m, lambda ref: _split_fused(ref)[0], act)
        if why:
            report.left.append((path, name, f"splitting its activation off fails the probe: "
                                f"{why}"))
            continue
        wrapped = ad.ActThenNorm(act, norm)
        _replace(new, path, wrapped)
        report.moved.append((path, f"{type(act).__qualname__} (its own, fused)"))
    if separate:
        try:
            new = _move_traced(new, separate, placement, report)
        except Exception as exc:  # torch.fx cannot trace data-dependent control flow and more
            report.trace_error = f"{type(exc).__name__}: {exc}"
            new = _move_parts(new, separate, placement, report)
    if example_inputs is not None:
        _check_model(model, new, example_inputs, "move_norms", exact=False, rtol=0.0)
        _check_called(new, example_inputs, report)
    return new, report


def _check_called(new: nn.Module, example_inputs, report: PlacementReport) -> None:
    """Every moved layer is called when the new model (a copy, in eval mode) runs."""
    run = copy.deepcopy(new).eval()
    called: set[str] = set()
    for p, m in run.named_modules():
        if isinstance(m, ad.ActThenNorm | ad.NormAct):
            m.register_forward_hook(lambda mod, i, o, p=p: called.add(p))
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        run(*args)
    missing = [p for p, _ in report.moved if p not in called]
    if missing:
        raise SurgeryError(f"move_norms: the moved layer(s) {', '.join(missing)} are not called "
                           "on example_inputs")
