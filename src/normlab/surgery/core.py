"""Model surgery: convert, swap, insert, remove and fold normalization layers.

Every function works on a deep copy and returns a new module tree; the input model is never
changed. Layer paths in reports and errors are the dotted names of ``model.named_modules()``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from normlab import nn as nl
from normlab.reference import apply_activation
from normlab.registry import create_norm_layer
from normlab.surgery import adapters as ad

__all__ = ["InsertReport", "Passthrough", "SurgeryError", "SurgeryReport", "SurgeryWarning",
           "convert_sync_batchnorm", "freeze_batch_norm", "insert_norms", "is_norm",
           "remove_norms", "swap_norms", "to_normlab"]


class SurgeryError(ValueError):
    """A conversion that cannot be done, naming the layer and the reason."""


class SurgeryWarning(UserWarning):
    """Layers a surgery left as they are (the caller did not ask for the report)."""


@dataclass
class SurgeryReport:
    """What a surgery did: ``changed`` as (layer path, before, after) and ``left`` as
    (layer path, class name, reason) for every layer it left as it is."""

    changed: list[tuple[str, str, str]] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"changed {p}: {a} -> {b}" for p, a, b in self.changed]
        lines += [f"left {p} ({c}): {why}" for p, c, why in self.left]
        return "\n".join(lines) or "no normalization layer found"


# --------------------------------------------------------------------------------------------
# what counts as a normalization layer


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer of the adapter table (torch.nn, normlab,
    timm, torchvision, Hugging Face; exact classes, never a subclass), a :class:`NormAct` or an
    :class:`ActThenNorm`.
    AdaIN takes two inputs and is left alone."""
    return ad.adapter_for(module) is not None or isinstance(module, ad.NormAct)


def _factory(m: nn.Module) -> dict:
    t = next(iter(m.parameters()), None)
    if t is None:
        t = next((b for b in m.buffers() if b.is_floating_point()), None)
    return {} if t is None else {"device": t.device, "dtype": t.dtype}


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path``, in the mode (train/eval) of the module it replaces: a fresh
    wrapper or placeholder (and its ``nn.Identity`` slots) would otherwise be in training mode
    inside a model in eval mode. Modules it holds from the model keep their own modes."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    old = getattr(parent, name, None)
    if isinstance(old, nn.Module):
        new.training = old.training
        for child in new.children():
            if type(child) is nn.Identity:
                child.training = old.training
    setattr(parent, name, new)


def _candidates(model: nn.Module, filter=None) -> list[tuple[str, nn.Module]]:
    """Every norm-like module (outermost first; none inside another), with ``filter``."""
    out, inside = [], []
    for path, m in model.named_modules():
        if any(path.startswith(p + ".") for p in inside):
            continue
        if ad.looks_like_norm(m):
            inside.append(path)
            if filter is None or filter(path, m):
                out.append((path, m))
    return out


def _name(m: nn.Module) -> str:
    return type(m).__qualname__


def _finish(new: nn.Module, report: SurgeryReport, return_report: bool, what: str):
    if return_report:
        return new, report
    if report.left:
        shown = "; ".join(f"{p} ({c}): {why}" for p, c, why in report.left[:3])
        more = f" and {len(report.left) - 3} more" if len(report.left) > 3 else ""
        warnings.warn(f"{what} left {len(report.left)} layer(s) as they are: {shown}{more} "
                      "(return_report=True gives the full report)", SurgeryWarning,
                      stacklevel=3)
    return new


def _check_model(old: nn.Module, new: nn.Module, example_inputs, what: str, *, exact: bool,
                 rtol: float, modes=("eval", "train")) -> None:
    """Run both models on ``example_inputs`` in float64 (eval, and train where the outputs of
    two runs of the original agree) and raise SurgeryError when they differ."""
    if example_inputs is None:
        return
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    args = tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)
    for mode in modes:
        a = getattr(copy.deepcopy(old).double(), mode)()
        b = getattr(copy.deepcopy(new).double(), mode)()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ya = a(*args)
            torch.manual_seed(0)
            yb = b(*args)
        ya, yb = _first_tensor(ya), _first_tensor(yb)
        if exact:
            err = ad._rel_err(ya, yb)
            if not err <= rtol:
                raise SurgeryError(f"{what}: the model's {mode} output on example_inputs "
                                   f"differs by relative error {err:.2g} > {rtol:g}")
        elif ya.shape != yb.shape:
            raise SurgeryError(f"{what}: the model's {mode} output shape changed from "
                               f"{tuple(ya.shape)} to {tuple(yb.shape)}")


def _first_tensor(y):
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, dict) or hasattr(y, "values"):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        for v in y:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


# --------------------------------------------------------------------------------------------
# to_normlab


def _twin_of(path: str, m: nn.Module) -> tuple[nn.Module | None, str]:
    """(normlab twin, note) or (None, reason): read by the adapter (or the structural
    fallback), built, and checked on a probe."""
    try:
        info = ad.read(m)
        twin = ad.build_twin(info, m)
        why = ad.probe(m, lambda ref: ad.build_twin(ad.read_like(ref, info), ref),
                       ad.probe_shape(info), upcast=info.upcast, eps=info.eps)
    except ad.Refused as exc:
        return None, str(exc)
    except (ValueError, TypeError) as exc:
        return None, f"normlab cannot build its twin: {exc}"
    if why:
        return None, why
    return twin, info.note


def to_normlab(model: nn.Module, *, example_inputs=None, return_report: bool = False):
    """A copy of ``model`` with every normalization layer of the adapter table (torch.nn, timm,
    torchvision, Hugging Face) replaced by its normlab twin with its exact state (parameters,
    running statistics, batch count, train/eval mode; a timm norm+act's activation fused where
    normlab has it, else kept after the norm in a :class:`NormAct`). Each twin is checked on
    float64 probe inputs (eval and train) before it is accepted; a layer that is not in the
    table, fails its probe or has no normlab kind is left as it is, with the reason in the
    report. ``SyncBatchNorm`` becomes ``normlab.nn.BatchNorm``.

    ``example_inputs`` (a tensor or tuple): also compare the whole model's outputs on it
    (float64, eval and train) and raise :class:`SurgeryError` if they differ by more than
    ``PROBE_RTOL_UPCAST`` (1e-5: models with float32 layers inside) relative. Returns the new
    model, or ``(model, SurgeryReport)`` with ``return_report=True``; without it a
    :class:`SurgeryWarning` names the layers left."""
    new = copy.deepcopy(model)
    report = SurgeryReport()
    todo = [("", new)] if ad.looks_like_norm(new) else _candidates(new)
    for path, m in todo:
        if isinstance(m, (ad.NormAct, *ad.NORMLAB_CLASSES)):
            continue  # already normlab
        twin, note = _twin_of(path, m)
        if twin is None:
            report.left.append((path, _name(m), note))
            continue
        report.changed.append((path, _name(m), repr(twin) if not note else
                               f"{twin!r} ({note})"))
        if not path:
            new = twin
        else:
            _replace(new, path, twin)
    _check_model(model, new, example_inputs, "to_normlab", exact=True,
                 rtol=ad.PROBE_RTOL_UPCAST)
    return _finish(new, report, return_report, "to_normlab")


# --------------------------------------------------------------------------------------------
# swap_norms


def _carry(info: ad.NormInfo, new: nn.Module, c: int) -> None:
    """Copy per-channel affine parameters (and running statistics between batch-like kinds)
    where they mean the same in both layers; a weight offset (Gemma's 1 + w) is applied."""
    norm = new.norm if isinstance(new, ad.NormAct) else new
    if isinstance(norm, nn.Identity):
        return
    with torch.no_grad():
        for name, src in (("weight", info.weight), ("bias", info.bias)):
            dst = getattr(norm, name, None)
            if (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)
                    and src.shape == dst.shape == (c,)):
                off = info.weight_offset if name == "weight" else 0.0
                dst.copy_(src.detach().double() + off if off else src.detach())
        if info.kind in ("batch", "frozen") and info.running_mean is not None \
                and getattr(norm, "running_mean", None) is not None:
            norm.running_mean.copy_(info.running_mean)
            norm.running_var.copy_(info.running_var)
            nbt = getattr(norm, "num_batches_tracked", None)
            if nbt is not None and info.num_batches_tracked is not None:
                nbt.copy_(info.num_batches_tracked)


def swap_norms(model: nn.Module, to: str, *, filter: Callable[[str, nn.Module], bool] | None
               = None, example_inputs=None, return_report: bool = False, **kwargs):
    """A copy of ``model`` with every normalization layer (those for which
    ``filter(path, module)`` is true) replaced by a ``to`` layer from the registry, built for
    the channel count and channel axis the adapter reads (timm's channels-first LayerNorm2d:
    axis 1); ``kwargs`` go to its constructor (e.g. ``num_groups``). Per-channel weight and
    bias are carried over where both layers have them (Gemma's weight as 1 + w), running
    statistics between batch-norm kinds; a norm+act keeps its activation (fused where normlab
    has it); the train/eval mode is kept.

    A different kind changes the function by design; each new layer is checked on a probe of
    the old one's input shape to run and give the old output's shape. A layer the adapter
    table does not know is left and reported. Raises :class:`SurgeryError` naming the layer
    when the new kind cannot be built for it. ``example_inputs``: also check the whole model
    runs on it and keeps its output shape. Returns the new model, or ``(model, report)``."""
    new = copy.deepcopy(model)
    report = SurgeryReport()
    todo = [("", new)] if ad.looks_like_norm(new) else _candidates(new, filter)
    model_factory = _factory(new)  # for norms without parameters (OLMo's layer norm)
    for path, m in todo:
        try:
            info = ad.read(m)
        except ad.Refused as exc:
            report.left.append((path, _name(m), str(exc)))
            continue
        try:
            c = info.channels()
        except ad.Refused as exc:
            raise SurgeryError(f"layer {path!r} ({m}) {exc}") from None
        try:
            act, rest = ad.split_rest(info)
        except ad.Refused as exc:
            report.left.append((path, _name(m), str(exc)))
            continue
        if to == "none":
            layer = Passthrough(act) if not rest else ad.NormAct(nn.Identity(), info.drop,
                                                                 info.act)
        else:
            kw = {**(_factory(m) or model_factory), "channel_axis": info.channel_axis,
                  **kwargs}
            if act is not None:
                kw["activation"] = act
            try:
                layer = create_norm_layer(to, c, **kw)
            except (ValueError, TypeError) as exc:
                raise SurgeryError(f"cannot replace layer {path!r} ({m}) by {to!r}: {exc}") \
                    from None
            layer = ad.wrap_rest(layer, info, rest)
            _carry(info, layer, c)
        layer.train(m.training)
        why = _shape_probe(m, layer, info)
        if why:
            raise SurgeryError(f"cannot replace layer {path!r} ({m}) by {to!r}: {why}")
        report.changed.append((path, _name(m), repr(layer)))
        if not path:
            new = layer
        else:
            _replace(new, path, layer)
    _check_model(model, new, example_inputs, "swap_norms", exact=False, rtol=0.0)
    return _finish(new, report, return_report, "swap_norms")


def _shape_probe(old: nn.Module, new: nn.Module, info: ad.NormInfo) -> str | None:
    x = torch.randn(ad.probe_shape(info), dtype=torch.float64)
    try:
        with torch.no_grad():
            ya = copy.deepcopy(old).double().eval()(x)
            yb = copy.deepcopy(new).double().eval()(x)
    except Exception as exc:
        return f"the new layer fails on a probe of shape {tuple(x.shape)}: {exc}"
    if ya.shape != yb.shape:
        return f"output shape {tuple(yb.shape)} instead of {tuple(ya.shape)}"
    if not torch.isfinite(yb).all():
        return "non-finite output on a probe"
    return None


# --------------------------------------------------------------------------------------------
# remove_norms


class Passthrough(nn.Module):
    """What a removed norm leaves behind: ``act(x + residual)`` with the removed layer's fused
    activation (the identity when it had none), so call sites keep working."""

    def __init__(self, activation: str | None = None):
        super().__init__()
        self.activation = activation

    def forward(self, input, residual=None):
        y = input if residual is None else input + residual
        return apply_activation(y, self.activation)  # the one definition normlab's layers use

    def extra_repr(self) -> str:
        return "" if self.activation is None else f"activation={self.activation!r}"


def _without_norm(m: nn.Module) -> nn.Module:
    """What is left of a norm layer without its normalization: its activation (and drop)."""
    if isinstance(m, ad.NormAct):
        return ad.NormAct(nn.Identity(), m.drop, m.act)
    if isinstance(m, ad.ActThenNorm):  # a norm moved after its activation: the activation
        return m.act
    try:
        info = ad.read(m)
        act, rest = ad.split_rest(info)
    except ad.Refused:
        return Passthrough(getattr(m, "activation", None))
    return Passthrough(act) if not rest else ad.NormAct(nn.Identity(), info.drop, info.act)


def remove_norms(model: nn.Module, *, filter=None) -> nn.Module:
    """A copy of ``model`` with every normalization layer replaced by a :class:`Passthrough`
    (the "no normalization" baseline); a norm+act keeps its activation and drop."""
    new = copy.deepcopy(model)
    if is_norm(new):
        return _without_norm(new)
    for path, m in _candidates(new, filter):
        if is_norm(m):
            _replace(new, path, _without_norm(m))
    return new


# --------------------------------------------------------------------------------------------
# insert_norms

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
                nn.ELU, nn.SELU, nn.Mish, nn.Hardswish, nn.Softplus, nn.PReLU)
_LINEAR_LIKE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class InsertReport:
    """What ``insert_norms`` did: ``inserted`` as (new layer path, layer repr, after which
    layer), ``skipped`` as (path, reason)."""

    inserted: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"inserted {p}: {r} (after {a})" for p, r, a in self.inserted]
        lines += [f"skipped {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines) or "nothing to do"


def _out_channels(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.out_features, -1  # features are the last dim of a Linear's output
    return m.out_channels, 1


def insert_norms(model: nn.Module, kind: str, placement: str = "before_activation",
                 **kwargs) -> tuple[nn.Module, InsertReport]:
    """Insert a ``kind`` norm around each Linear/Conv that an activation follows directly in a
    ``nn.Sequential`` (at any depth): ``Linear -> Norm -> Act`` with
    ``placement="before_activation"`` (the seed's), ``Linear -> Act -> Norm`` with
    ``"after_activation"``. A pair that already has a norm next to it is skipped. Returns the new
    model and an :class:`InsertReport`."""
    if placement not in ("before_activation", "after_activation"):
        raise SurgeryError("placement must be 'before_activation' or 'after_activation', got "
                           f"{placement!r}")
    new = copy.deepcopy(model)
    report = InsertReport()
    for seq_path, seq in list(new.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        out: list[tuple[str, nn.Module]] = []
        i = 0
        while i < len(children):
            name, m = children[i]
            out.append((name, m))
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            if isinstance(m, _LINEAR_LIKE) and isinstance(nxt, _ACTIVATIONS):
                after = children[i + 2][1] if i + 2 < len(children) else None
                full = f"{seq_path}.{name}" if seq_path else name
                if placement == "after_activation" and is_norm(after):
                    report.skipped.append((full, "already followed by a norm"))
                else:
                    c, axis = _out_channels(m)
                    try:
                        layer = create_norm_layer(kind, c, channel_axis=axis, **_factory(m),
                                                  **kwargs)
                    except (ValueError, TypeError) as exc:
                        raise SurgeryError(f"cannot insert {kind!r} after layer {full!r} "
                                           f"({m}): {exc}") from None
                    layer.train(m.training)
                    act_name, act = children[i + 1]
                    norm_name = f"{name}_norm"
                    if placement == "before_activation":
                        out += [(norm_name, layer), (act_name, act)]
                    else:
                        out += [(act_name, act), (norm_name, layer)]
                    where = f"{seq_path}.{norm_name}" if seq_path else norm_name
                    report.inserted.append((where, repr(layer), full if placement ==
                                            "before_activation" else
                                            (f"{seq_path}.{act_name}" if seq_path
                                             else act_name)))
                    i += 2
                    continue
            elif isinstance(m, _LINEAR_LIKE) and is_norm(nxt):
                full = f"{seq_path}.{name}" if seq_path else name
                report.skipped.append((full, "already followed by a norm"))
            i += 1
        if len(out) != len(children):
            for name, _ in children:
                delattr(seq, name)
            for name, m in out:
                seq.add_module(name, m)
    return new, report


# --------------------------------------------------------------------------------------------
# sync and freeze


_OTHER_STATISTICS = (nl.BatchRenorm, nl.GhostBatchNorm)


def _batch_like(m: nn.Module) -> bool:
    """Whether ``m`` keeps batch-norm state (a subclass normlab does not know included)."""
    return (isinstance(m, nn.modules.batchnorm._BatchNorm)
            or isinstance(getattr(m, "running_mean", None), torch.Tensor))


def _batch_norms(new: nn.Module, report: SurgeryReport, want: Callable):
    """(path, module, info, fused act, rest) of every batch-norm layer ``want(info)`` accepts;
    every other layer holding batch-norm state goes in ``report.left`` with the reason."""
    todo = [("", new)] if ad.looks_like_norm(new) or _batch_like(new) else []
    if not todo:
        inside: list[str] = []
        for path, m in new.named_modules():
            if not path or any(path.startswith(p + ".") for p in inside):
                continue
            if ad.looks_like_norm(m) or _batch_like(m):
                inside.append(path)
                todo.append((path, m))
    out = []
    for path, m in todo:
        try:
            info = ad.read(m)
            act, rest = ad.split_rest(info)
        except ad.Refused as exc:
            if _batch_like(m):
                report.left.append((path, _name(m), str(exc)))
            continue
        why = want(m, info)
        if why is None:
            out.append((path, m, info, act, rest))
        elif why:
            report.left.append((path, _name(m), why))
    return out


def _with_state(new: nn.Module, info: ad.NormInfo) -> nn.Module:
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            src, dst = getattr(info, name), getattr(new, name, None)
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
                dst.copy_(src.detach().double() + info.weight_offset
                          if name == "weight" and info.weight_offset else src.detach())
    return new


def _sync_of(m: nn.Module, info: ad.NormInfo, act, rest, process_group) -> nn.Module:
    affine = info.weight is not None
    sync = nl.SyncBatchNorm(info.num_channels, info.eps, info.momentum, affine,
                            info.track_running_stats, process_group, **_factory(m),
                            bias=info.bias is not None or not affine,
                            channel_axis=info.channel_axis, activation=act)
    _with_state(sync, info).train(m.training)
    return ad.wrap_rest(sync, info, rest)


def convert_sync_batchnorm(model: nn.Module, process_group=None, *,
                           return_report: bool = False):
    """A copy of ``model`` with every batch norm whose statistics are the batch's (torch.nn's,
    normlab's, timm's ``BatchNormAct2d``/``SyncBatchNormAct`` with the activation fused where
    normlab has it, else kept after it) replaced by :class:`normlab.nn.SyncBatchNorm` with the
    same state, on ``process_group``: works on any torch.distributed backend (gloo on CPU
    included). Each new layer is checked, in one process, on float64 probe inputs (eval and
    train, running statistics after the step) before it is accepted. Batch norms with other
    statistics (renorm, ghost batches, frozen) and batch-norm subclasses normlab does not know
    are left as they are and named in the report (``return_report=True`` returns
    ``(model, SurgeryReport)``; without it a :class:`SurgeryWarning` names them)."""
    new = copy.deepcopy(model)
    report = SurgeryReport()

    def want(m, info):
        if info.kind == "frozen":
            return ""  # no batch statistics to synchronize: nothing to say
        if info.kind != "batch":
            return "" if not _batch_like(m) else f"a {info.kind} norm"
        if isinstance(m, _OTHER_STATISTICS):
            return ("its statistics are not the whole batch's (batch renorm or ghost "
                    "batches): no synchronized version")
        return None

    for path, m, info, act, rest in _batch_norms(new, report, want):
        sync = _sync_of(m, info, act, rest, process_group)
        def make(ref, i=info):
            return _sync_of(ref, ad.read_like(ref, i), *ad.split_rest(i), None)

        if _distributed():  # a train-mode probe would start a collective on this process only
            why = _eval_probe(m, make, info, modes=("eval",))
        else:
            why = ad.probe(m, make, ad.probe_shape(info), upcast=info.upcast, eps=info.eps)
        if why:
            report.left.append((path, _name(m), why))
            continue
        report.changed.append((path, _name(m), repr(sync)))
        if not path:
            new = sync
        else:
            _replace(new, path, sync)
    return _finish(new, report, return_report, "convert_sync_batchnorm")


def _frozen_of(m: nn.Module, info: ad.NormInfo, act, rest) -> nn.Module:
    frozen = nl.FrozenBatchNorm(info.num_channels, info.eps, **_factory(m),
                                channel_axis=info.channel_axis, activation=act)
    _with_state(frozen, info).train(m.training)
    return ad.wrap_rest(frozen, info, rest)


def freeze_batch_norm(model: nn.Module, *, return_report: bool = False):
    """A copy of ``model`` with every batch norm that has running statistics (torch.nn's,
    normlab's, the norm+act layers of timm and normlab's ``NormAct``, with their activation
    kept) replaced by :class:`normlab.nn.FrozenBatchNorm` carrying its weight, bias and running
    statistics (affine-less ones get weight 1, bias 0). Each frozen layer is checked against
    the original in eval mode on float64 probe inputs (a frozen layer computes in training what
    the original computes in evaluation). Layers without running statistics, and batch-norm
    subclasses normlab does not know, are kept and named in the report (``return_report=True``
    returns ``(model, SurgeryReport)``; without it a :class:`SurgeryWarning` names them)."""
    new = copy.deepcopy(model)
    report = SurgeryReport()

    def want(m, info):
        if info.kind == "frozen":
            return ""  # frozen already
        if info.kind != "batch":
            return "" if not _batch_like(m) else f"a {info.kind} norm"
        if info.running_mean is None:
            return "no running statistics to freeze"
        return None

    for path, m, info, act, rest in _batch_norms(new, report, want):
        frozen = _frozen_of(m, info, act, rest)
        why = _eval_probe(m, lambda ref, i=info: _frozen_of(ref, ad.read_like(ref, i),
                                                            *ad.split_rest(i)), info)
        if why:
            report.left.append((path, _name(m), why))
            continue
        report.changed.append((path, _name(m), repr(frozen)))
        if not path:
            new = frozen
        else:
            _replace(new, path, frozen)
    return _finish(new, report, return_report, "freeze_batch_norm")


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _eval_probe(m: nn.Module, make_new: Callable, info: ad.NormInfo,
                modes=("eval", "train")) -> str | None:
    """The original in eval mode against the new layer in eval and in train mode (a frozen
    layer computes the same in both): float64, random affine and running statistics, inputs
    at unit scale and at sqrt(eps). None when equal within ``ad.PROBE_RTOL``, else the reason."""
    gen = torch.Generator().manual_seed(1234)
    ref = copy.deepcopy(m).double()
    ad._randomize(ref, gen)
    ref.eval()
    new = make_new(ref).double()
    x = torch.randn(ad.probe_shape(info), generator=gen, dtype=torch.float64) * 1.5 + 0.3
    tol = ad.PROBE_RTOL_UPCAST if info.upcast else ad.PROBE_RTOL
    for s in [1.0] + ([math.sqrt(info.eps)] if info.eps else []):
        with torch.no_grad():
            try:
                ya = ref(x * s)
            except Exception as exc:
                return f"the original layer fails on a probe of shape {tuple(x.shape)}: {exc}"
            for mode in modes:
                try:
                    yb = getattr(new, mode)()(x * s)
                except Exception as exc:
                    return f"the new layer fails on the probe: {type(exc).__name__}: {exc}"
                err = ad._rel_err(ya, yb)
                if not err <= tol:
                    return (f"the new layer's {mode} output differs from the original's eval "
                            f"output on a probe (scale {s:.2g}): relative error {err:.2g} > "
                            f"{tol:g}")
    return None
