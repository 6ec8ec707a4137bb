"""``normlab study``: the lab's method on the user's own model and data.

The user names a model factory and a data factory (import paths ``pkg.mod:name``, or callables
from Python). Each *arm* is the model as given (``as-is``, the baseline: the user's own
normalization), or the model after ``normlab.surgery``: ``swap_norms`` to a registry kind
(``group``, ``layer``, ``rms``, ``batch``, ``ghost:K``, ...) or ``remove_norms`` (``none``);
a suffix ``@after`` / ``@before`` then moves the norms after / before their activation
(``move_norms``: ``as-is@after`` is the model's own norms after the activation,
``group:4@after`` group norm there). A factory that accepts ``norm=`` builds the arm itself
instead (``factory(norm="group@after")``; every arm but the plain ``as-is``, ``as-is@after``
too).

Every (arm, batch size, learning rate, seed) is one run of the lab's runner
(``lab.runner.run_all``): rows appended to ``results.jsonl`` as runs finish, keyed by the hash of
the resolved config, so an interrupted study resumes; the folder is locked while it runs. A
run that cannot go on (a surgery refusal, batch norm on a batch of 1, any exception the user's
model raises) is a row with ``status: "error"`` and the reason, never a crash of the study.

A validation split is carved from the training set (a fixed permutation, ``split_seed``), the
same for every run; each run reports the metric on the validation and the test split. Which
learning rate each arm uses, and the recommendation, are computed from the rows alone
(``normlab.results.advice``); ``claims.json`` (written after the runs) states each arm against
``as-is`` at their own best rates, so ``normlab report`` renders a study as it renders the lab.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from normlab.lab.engine import MAX_RETRIES, EngineError, make_engine
from normlab.lab.runner import run_all, run_key
from normlab.results import FolderBusy, folder_lock, write_atomic
from normlab.results.advice import BASELINE, advise, study_claims

__all__ = ["BASELINE", "StudyError", "plan_user_study", "resolve", "run_study", "train_user"]

MAX_SEEDS = 100
MAX_STEPS = 10_000_000
TASKS = {"classification": ("acc", "higher"), "regression": ("mse", "lower")}
_TAKES_K = {"group": "num_groups", "ghost": "virtual_batch_size", "renorm": "virtual_batch_size"}
_LOCAL: dict[str, Callable] = {}  # callables given from Python that no import path reaches


class StudyError(ValueError):
    """Bad study input (import path, factory result, norm name, range): one clear line."""


# --------------------------------------------------------------------------------------------
# import paths and factories


def resolve(path: str, arg: str) -> Callable:
    """The callable named by ``pkg.mod:name`` (``name`` may be dotted); ``arg`` names the
    argument in the error."""
    if path in _LOCAL:
        return _LOCAL[path]
    if not isinstance(path, str) or path.count(":") != 1:
        raise StudyError(f"{arg}: expected an import path 'package.module:name', got {path!r}")
    mod_name, _, attr = path.partition(":")
    if not mod_name or not attr:
        raise StudyError(f"{arg}: expected an import path 'package.module:name', got {path!r}")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as exc:
        raise StudyError(f"{arg} {path}: cannot import module {mod_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise StudyError(f"{arg} {path}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise StudyError(f"{arg} {path}: expected a callable, got {type(obj).__name__}")
    return obj


def _path_of(obj, arg: str) -> str:
    """An import path for ``obj`` (a string as given, or a callable's own module and name;
    a callable no import reaches, e.g. defined in a notebook, is kept in this process)."""
    if isinstance(obj, str):
        resolve(obj, arg)
        return obj
    if not callable(obj):
        raise StudyError(f"{arg}: expected an import path 'package.module:name' or a callable, "
                         f"got {type(obj).__name__}")
    mod, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if mod and name and mod != "__main__" and "<" not in name:
        with contextlib.suppress(StudyError):
            if resolve(f"{mod}:{name}", arg) is obj:
                return f"{mod}:{name}"
    key = f"local:{mod}:{name}"
    _LOCAL[key] = obj
    return key


def _takes_norm(factory) -> bool:
    try:
        return "norm" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


_PLACEMENTS = {"after": "after_activation", "before": "before_activation"}


def parse_arm(name: str) -> tuple[str, str | None]:
    """``"group:4@after"`` -> ``("group:4", "after_activation")``: the norm part (checked by
    :func:`parse_norm`) and the placement an ``@after`` / ``@before`` suffix asks for (None
    without one: the norms stay where the model has them)."""
    if not isinstance(name, str):
        raise StudyError(f"--norms: expected a norm name, got {type(name).__name__}")
    base, sep, where = name.partition("@")
    if not sep:
        parse_norm(name)
        return name, None
    if where not in _PLACEMENTS:
        raise StudyError(f"--norms: {name!r}: expected @after or @before (the norms after or "
                         f"before their activation), got @{where}")
    if base == "none":
        raise StudyError(f"--norms: {name!r}: 'none' has no norm to place")
    parse_norm(base)
    return base, _PLACEMENTS[where]


def parse_norm(name: str) -> tuple[str, dict]:
    """``"group:8"`` -> ``("group", {"num_groups": 8})``; ``"as-is"``, ``"none"``, a registry
    name, or ``ghost:K`` / ``renorm:K`` (virtual batch of K) / ``group:G``. An arm's
    ``@after``/``@before`` suffix is :func:`parse_arm`'s."""
    from normlab.registry import list_norm_layers

    kind, sep, k = name.partition(":")
    valid = ("as-is", *list_norm_layers())
    if kind not in valid or kind == "adain":
        raise StudyError(f"--norms: unknown norm {name!r}; expected one of "
                         f"{', '.join(v for v in valid if v != 'adain')} (group:G, ghost:K, "
                         f"renorm:K with an integer; @after or @before to move the norms "
                         f"after or before their activation)")
    if not sep:
        return kind, {}
    if kind not in _TAKES_K:
        raise StudyError(f"--norms: {name!r}: only {', '.join(_TAKES_K)} take ':N'")
    try:
        value = int(k)
    except ValueError:
        value = 0
    if value <= 0:
        raise StudyError(f"--norms: {name!r}: expected a positive integer after ':', got {k!r}")
    return kind, {_TAKES_K[kind]: value}


class _Refused(Exception):
    """This arm cannot be built from this model (the reason is the row's error)."""


def build_arm(factory: Callable, norm: str, example=None):
    """(model, note) for arm ``norm`` from ``factory``; ``_Refused`` with the reason.
    ``example``: a tuple of inputs the model takes (a placement arm checks on it that the moved
    layers run)."""
    from torch import nn

    from normlab.surgery import SurgeryError, is_norm, move_norms, remove_norms, swap_norms

    base, placement = parse_arm(norm)
    if placement is not None and not _takes_norm(factory):
        model, note = build_arm(factory, base)
        try:
            model, report = move_norms(model, placement, example_inputs=example)
        except SurgeryError as exc:
            raise _Refused(f"move_norms refused: {exc}") from None
        side = placement.split("_")[0]
        if not report.moved:
            why = "; ".join(f"{p} ({c}): {r}" for p, c, r in report.left[:5])
            if len(report.left) > 5:
                why += f"; and {len(report.left) - 5} more"
            if report.already:
                there = ", ".join(p for p, _ in report.already[:5])
                why = "; ".join(w for w in (f"{len(report.already)} norm(s) already {side} "
                                            f"their activation ({there})", why) if w)
            why = why or "the model has no normalization layer surgery knows"
            if report.trace_error:
                why = (f"torch.fx could not trace the model ({report.trace_error[:200]}); "
                       + why)
            raise _Refused(f"move_norms {side} the activation moved no layer: {why}")
        note += (f"; move_norms: {len(report.moved)} norm(s) moved {side} their activation "
                 f"({report.method}), {len(report.left)} left")
        return model, note
    kind, kwargs = parse_norm(base)
    if kind == "as-is" or _takes_norm(factory):
        # a factory taking norm= builds every arm but the plain "as-is" itself, "as-is@after"
        # too (calling factory() there would be the baseline under another name)
        plain = kind == "as-is" and placement is None
        model = factory() if plain else factory(norm=norm)
        if not isinstance(model, nn.Module):
            raise _Refused(f"the model factory returned {type(model).__name__}, expected a "
                           "torch.nn.Module")
        return model, "as given" if plain else f"built by the factory (norm={norm!r})"
    base = factory()
    if kind == "none":
        n = sum(is_norm(m) for m in base.modules())
        if n == 0:
            raise _Refused("remove_norms: the model has no normalization layer to remove")
        return remove_norms(base), f"remove_norms: {n} layer(s) removed"
    try:
        model, report = swap_norms(base, kind, return_report=True, **kwargs)
    except SurgeryError as exc:
        raise _Refused(f"swap_norms refused: {exc}") from None
    if not report.changed:
        why = "; ".join(f"{p or 'model'} ({c}): {r}" for p, c, r in report.left) or \
            "the model has no normalization layer surgery knows"
        raise _Refused(f"swap_norms to {norm!r} changed no layer: {why}")
    note = f"swap_norms: {len(report.changed)} layer(s) changed"
    if report.left:
        note += f", {len(report.left)} left: " + "; ".join(
            f"{p} ({c}): {r}" for p, c, r in report.left)
    return model, note


# --------------------------------------------------------------------------------------------
# data


def _as_dataset(obj, arg: str, which: str):
    from torch.utils.data import DataLoader

    if isinstance(obj, DataLoader):
        obj = obj.dataset  # the batch size is the study's knob: the loader's own is not used
    if not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        raise StudyError(f"{arg}: the {which} set must be a map-style torch Dataset (with "
                         f"__len__ and __getitem__) or a DataLoader over one, got "
                         f"{type(obj).__name__}")
    if len(obj) == 0:
        raise StudyError(f"{arg}: the {which} set is empty")
    return obj


def load_data(factory: Callable, arg: str = "--data"):
    """``(train, test)`` map-style datasets from the factory's result."""
    out = factory()
    if isinstance(out, dict) and {"train", "test"} <= set(out):
        out = (out["train"], out["test"])
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise StudyError(f"{arg}: the data factory must return (train, test) datasets or "
                         f"loaders, got {type(out).__name__}"
                         + (f" of length {len(out)}" if isinstance(out, tuple | list) else ""))
    return _as_dataset(out[0], arg, "train"), _as_dataset(out[1], arg, "test")


def split_train(train, val_fraction: float, split_seed: int):
    """``(fit, val)`` index lists: a fixed permutation of the training set (seeded with
    ``split_seed``), its first ``val_fraction`` (at least one example) held out."""
    import torch

    n = len(train)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise StudyError(f"--val-fraction {val_fraction}: leaves no training example of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    return perm[n_val:], perm[:n_val]


_DATA_CACHE: dict[tuple, tuple] = {}  # per process: the data factory is called once


def _data(cfg: dict):
    key = (cfg["data"], cfg["val_fraction"], cfg["split_seed"])
    if key not in _DATA_CACHE:
        train, test = load_data(resolve(cfg["data"], "--data"))
        fit, val = split_train(train, cfg["val_fraction"], cfg["split_seed"])
        _DATA_CACHE[key] = (train, test, fit, val)
    return _DATA_CACHE[key]


def _batch(ds, idx, device):
    """(inputs, target) of the examples ``idx``: an example is ``(input..., target)``."""
    from torch.utils.data import default_collate

    items = default_collate([ds[i] for i in idx])
    if not isinstance(items, tuple | list) or len(items) < 2:
        raise TypeError("an example must be a tuple (input, ..., target), got "
                        f"{type(ds[idx[0]]).__name__}")
    *inputs, target = (t.to(device) if hasattr(t, "to") else t for t in items)
    return inputs, target


def _output(out):
    """The tensor of a model's output: itself, or ``.logits`` (Hugging Face), or
    ``out["logits"]``, or the first element of a tuple."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model's output must be a tensor or have .logits, got "
                    f"{type(out).__name__}")


def _task_fns(cfg: dict):
    """(loss(out, target), metric(out, target) -> float mean over the batch)."""
    import torch.nn.functional as F

    if cfg["loss"]:
        loss = resolve(cfg["loss"], "--loss")
    elif cfg["task"] == "regression":
        def loss(o, t):
            return F.mse_loss(o.reshape(t.shape).float(), t.float())
    else:
        loss = F.cross_entropy
    if cfg["metric"]:
        metric = resolve(cfg["metric"], "--metric")
    elif cfg["task"] == "regression":
        def metric(o, t):
            return F.mse_loss(o.reshape(t.shape).float(), t.float()).item()
    else:
        def metric(o, t):
            return (o.argmax(-1) == t).float().mean().item()
    return loss, metric


def _evaluate(model, ds, idx, cfg, loss_fn, metric_fn):
    import torch

    model.eval()
    total_loss = total_metric = 0.0
    with torch.no_grad():
        for start in range(0, len(idx), cfg["eval_batch_size"]):
            chunk = idx[start:start + cfg["eval_batch_size"]]
            inputs, target = _batch(ds, chunk, cfg["device"])
            out = _output(model(*inputs))
            total_loss += float(loss_fn(out, target)) * len(chunk)
            total_metric += float(metric_fn(out, target)) * len(chunk)
    model.train()
    return total_metric / len(idx), total_loss / len(idx)


# --------------------------------------------------------------------------------------------
# one run (in a worker of the lab's runner)


def _error(stage: str, exc: BaseException | str, t0: float, steps_done: int = 0,
           note: str | None = None) -> dict:
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return {"status": "error", "error": f"{stage}: {reason}", "stage": stage, "evals": [],
            "final": {}, "steps_done": steps_done, "train_seconds": time.perf_counter() - t0,
            "seconds_per_step": None, "surgery": note, "processes": 1}


def train_user(cfg: dict) -> dict:
    """Train one arm of a study per ``cfg``; the lab's row fields plus ``seconds_per_step``
    (training steps only, evaluations excluded) and ``surgery`` (what the arm changed).

    Never raises for what the user's model or data do: the run ends with ``status: "error"``
    and the stage and reason (``surgery``, ``train`` at step k, ``eval``)."""
    import torch

    t0 = time.perf_counter()  # the process is pinned already (lab.train.pin_run)
    try:
        train, test, fit, val = _data(cfg)
        factory = resolve(cfg["model"], "--model")
        torch.manual_seed(cfg["seed"])  # the model's initialization varies with the seed
        example = tuple(_batch(train, fit[:2], "cpu")[0])
        model, note = build_arm(factory, cfg["norm"], example)
        model = model.to(cfg["device"]).train()
        loss_fn, metric_fn = _task_fns(cfg)
    except _Refused as exc:
        return _error("surgery", str(exc), t0)
    except Exception as exc:  # the user's factory raised: a row, not a crash
        return _error("setup", exc, t0)
    bs = cfg["batch_size"]
    if bs > len(fit):
        return _error("train", f"batch size {bs} is larger than the training split "
                               f"({len(fit)} examples)", t0, note=note)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optimizer"] == "adam":
        opt = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    else:
        opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                              weight_decay=cfg["weight_decay"])
    gen = torch.Generator().manual_seed(10_000 + cfg["seed"])
    order, pos = torch.randperm(len(fit), generator=gen).tolist(), 0
    name = cfg["metric_name"]
    evals: list[dict] = []
    status, error, loss_value, train_time, step = "ok", None, None, 0.0, 0

    def evaluate(step: int) -> None:
        v_m, v_l = _evaluate(model, train, val, cfg, loss_fn, metric_fn)
        t_m, t_l = _evaluate(model, test, list(range(len(test))), cfg, loss_fn, metric_fn)
        evals.append({"step": step, "train_loss": loss_value, f"val_{name}": v_m,
                      "val_loss": v_l, f"test_{name}": t_m, "test_loss": t_l})

    try:
        for step in range(1, cfg["steps"] + 1):
            if pos + bs > len(order):
                order, pos = torch.randperm(len(fit), generator=gen).tolist(), 0
            idx = [fit[i] for i in order[pos:pos + bs]]
            pos += bs
            inputs, target = _batch(train, idx, cfg["device"])
            ts = time.perf_counter()
            loss = loss_fn(_output(model(*inputs)), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = loss.item()
            train_time += time.perf_counter() - ts
            if not math.isfinite(loss_value):
                status = "diverged"
                break
            if step % cfg["eval_every"] == 0 and step != cfg["steps"]:
                evaluate(step)
    except Exception as exc:  # the model refused this batch (batch norm on one value, ...)
        return _error("train", f"at step {step}: {type(exc).__name__}: {exc}", t0,
                      step - 1, note)
    try:
        evaluate(step)
    except Exception as exc:
        return _error("eval", exc, t0, step, note)
    done = step
    return {"status": status, "error": error, "evals": evals, "final": dict(evals[-1]),
            "steps_done": done, "train_seconds": train_time,
            "seconds_per_step": train_time / max(done, 1), "surgery": note, "processes": 1,
            "epochs": round(done * bs / len(fit), 2)}


# --------------------------------------------------------------------------------------------
# plan and run


def _positive_list(values, arg: str, kind, finite=True):
    if isinstance(values, int | float) and not isinstance(values, bool):
        values = [values]
    values = list(values or [])
    if not values:
        raise StudyError(f"{arg}: expected at least one value")
    out = []
    for v in values:
        try:
            x = kind(v)
        except (TypeError, ValueError):
            raise StudyError(f"{arg}: expected positive {kind.__name__} values, got {v!r}") \
                from None
        if isinstance(v, bool) or not x > 0 or (finite and not math.isfinite(x)) or \
                (kind is int and x != float(v)):
            raise StudyError(f"{arg}: expected positive {kind.__name__} values, got {v!r}")
        out.append(x)
    if len(set(out)) != len(out):
        raise StudyError(f"{arg}: a value is given twice: {values}")
    return out


def _bounded(v, lo, hi, arg, kind=int):
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi or \
            (kind is int and int(v) != v):
        raise StudyError(f"{arg}: expected {'an integer' if kind is int else 'a number'} in "
                         f"[{lo}, {hi}], got {v!r}")
    return kind(v)


def plan_user_study(model, data, *, norms=("as-is", "group", "layer", "none"),
                    batch_sizes=(32,), lrs=(0.01, 0.03, 0.1), seeds=3, steps=500,
                    eval_every=None, val_fraction=0.1, split_seed=0, task="classification",
                    loss=None, metric=None, better=None, optimizer="sgd", momentum=0.9,
                    weight_decay=0.0, eval_batch_size=256, device="cpu") -> tuple[list, dict]:
    """Check every setting, the factories and the data (one call each, in this process), and
    return ``(plan, settings)``: the run configs and the study's resolved settings."""
    import torch

    model_path, data_path = _path_of(model, "--model"), _path_of(data, "--data")
    if isinstance(norms, str):
        norms = [t.strip() for t in norms.split(",") if t.strip()]
    norms = list(norms)
    if not norms:
        raise StudyError("--norms: expected at least one norm")
    seen: dict = {}
    for n in norms:
        base, placement = parse_arm(n)
        kind, kw = parse_norm(base)
        same = seen.setdefault((kind, tuple(sorted(kw.items())), placement), n)
        if same != n or norms.count(n) > 1:  # also group:4 and group:04, one arm twice
            raise StudyError(f"--norms: a norm is given twice: {','.join(norms)}"
                             + (f" ({same!r} and {n!r} are the same arm)" if same != n else ""))
    if BASELINE not in norms:  # the baseline every arm is compared with
        norms = [BASELINE, *norms]
    batch_sizes = _positive_list(batch_sizes, "--batch-sizes", int)
    lrs = _positive_list(lrs, "--lr", float)
    seeds = _bounded(seeds, 1, MAX_SEEDS, "--seeds")
    steps = _bounded(steps, 1, MAX_STEPS, "--steps")
    eval_every = steps if eval_every is None else _bounded(eval_every, 1, steps, "--eval-every")
    val_fraction = _bounded(val_fraction, 1e-9, 0.5, "--val-fraction", float)
    eval_batch_size = _bounded(eval_batch_size, 1, 1_000_000, "--eval-batch-size")
    momentum = _bounded(momentum, 0.0, 0.999, "--momentum", float)
    weight_decay = _bounded(weight_decay, 0.0, 1.0, "--weight-decay", float)
    if task not in TASKS:
        raise StudyError(f"--task: expected one of {', '.join(TASKS)}, got {task!r}")
    if optimizer not in ("sgd", "adam"):
        raise StudyError(f"--optimizer: expected sgd or adam, got {optimizer!r}")
    metric_name, default_better = TASKS[task]
    loss_path = None if loss is None else _path_of(loss, "--loss")
    metric_path = None if metric is None else _path_of(metric, "--metric")
    if metric_path is not None:
        if better not in ("higher", "lower"):
            raise StudyError(f"--better: with --metric, say whether higher or lower is better "
                             f"(higher or lower), got {better!r}")
        metric_name = metric_path.rpartition(":")[2].rpartition(".")[2]
    better = better or default_better
    if better not in ("higher", "lower"):
        raise StudyError(f"--better: expected higher or lower, got {better!r}")
    if device not in ("cpu", "cuda"):
        raise StudyError(f"--device: expected cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise StudyError(f"--device cuda: CUDA is not available here (torch {torch.__version__}"
                         f"{', built without CUDA' if torch.version.cuda is None else ''}); "
                         "use --device cpu")
    # the factories, once each: a clear error before any run
    factory = resolve(model_path, "--model")
    torch.manual_seed(0)
    try:
        probe = factory()
    except Exception as exc:
        raise StudyError(f"--model {model_path}: the factory raised {type(exc).__name__}: "
                         f"{exc}") from None
    from torch import nn

    if not isinstance(probe, nn.Module):
        raise StudyError(f"--model {model_path}: the factory returned {type(probe).__name__}, "
                         "expected a torch.nn.Module")
    try:
        train, test = load_data(resolve(data_path, "--data"))
    except StudyError:
        raise
    except Exception as exc:
        raise StudyError(f"--data {data_path}: the factory raised {type(exc).__name__}: "
                         f"{exc}") from None
    fit, val = split_train(train, val_fraction, split_seed)
    cfg0 = {"device": "cpu", "task": task, "loss": loss_path, "metric": metric_path,
            "eval_batch_size": 2}
    try:
        inputs, target = _batch(train, fit[:2], "cpu")
        loss_fn, metric_fn = _task_fns(cfg0)
        probe.eval()
        with torch.no_grad():
            out = _output(probe(*inputs))
            float(loss_fn(out, target))
            float(metric_fn(out, target))
    except StudyError:
        raise
    except Exception as exc:
        raise StudyError(f"--model {model_path} / --data {data_path}: the model as given "
                         f"fails on two training examples: {type(exc).__name__}: {exc}") \
            from None
    too_big = [b for b in batch_sizes if b > len(fit)]
    if too_big:
        raise StudyError(f"--batch-sizes: {too_big[0]} is larger than the training split "
                         f"({len(fit)} of {len(train)} examples after the validation split)")
    base = {"claim": "study", "study": 1, "model": model_path, "data": data_path,
            "steps": steps, "eval_every": eval_every, "val_fraction": val_fraction,
            "split_seed": split_seed, "task": task, "loss": loss_path, "metric": metric_path,
            "metric_name": metric_name, "better": better, "optimizer": optimizer,
            "momentum": momentum, "weight_decay": weight_decay,
            "eval_batch_size": eval_batch_size, "device": device}
    runs = {(b, n, lr, s): {**base, "arm": n, "norm": n, "batch_size": b, "lr": lr, "seed": s}
            for b in batch_sizes for n in norms for lr in lrs for s in range(seeds)}
    # the order the runs start in: the arms take turns within each (batch size, seed, lr)
    # cell, in ABBA order (reversed every other cell), so that the machine's load falls on
    # every arm alike and their time per step (the advice's cost) compares fairly; in blocks
    # (every as-is run first) one arm would meet a quiet machine and another a busy one. The
    # runs and their keys are the same whatever the order.
    cells = [(b, s, lr) for b in batch_sizes for s in range(seeds) for lr in lrs]
    plan = [runs[b, n, lr, s] for i, (b, s, lr) in enumerate(cells)
            for n in (norms if i % 2 == 0 else norms[::-1])]
    settings = {"kind": "study", "model": model_path, "data": data_path, "norms": norms,
                "batch_sizes": batch_sizes, "lrs": lrs, "seeds": seeds, "steps": steps,
                "task": task, "metric": metric_name, "better": better, "device": device,
                "optimizer": optimizer, "momentum": momentum, "val_fraction": val_fraction,
                "train_examples": len(fit), "val_examples": len(val),
                "test_examples": len(test),
                "run_keys": [run_key(c) for c in runs.values()]}
    return plan, settings


def run_study(model, data, out="normlab-study", *, workers=None, progress=True, stream=None,
              render=None, engine="local", address=None, max_retries=MAX_RETRIES,
              **kwargs) -> dict:
    """Run a study into folder ``out`` (resuming) and return ``{"rows", "advice", "counts",
    "settings"}``: ``rows`` the current runs' rows, ``advice`` what ``normlab advise`` prints
    (``results.advice.advise``). ``kwargs``: the settings of :func:`plan_user_study`.

    ``render(out)``, if given, runs last inside the folder's lock (the CLI passes
    ``normlab.report.render_report``). A callable factory that no import path reaches (a
    notebook's) runs in this process only (``workers`` 1). ``engine``/``address``/
    ``max_retries``: where the runs run, as for ``normlab lab`` (``lab.engine``; ``ray`` needs
    the factories importable on every node)."""
    out = Path(out)
    plan, settings = plan_user_study(model, data, **kwargs)
    cores = os.cpu_count() or 1
    local = any(str(settings[k]).startswith("local:") for k in ("model", "data"))
    if workers is None:
        workers = 1 if local or settings["device"] == "cuda" else max(1, min(cores, 8))
    workers = _bounded(workers, 1, max(cores, 1), "--workers")
    if local and workers > 1:
        raise StudyError("--workers: a factory defined where no import reaches it (e.g. in a "
                         "notebook) runs in this process only: use workers=1, or give an "
                         "import path")
    if local and engine != "local":
        raise StudyError("--engine ray: a factory defined where no import reaches it (e.g. in "
                         "a notebook) runs in this process only: give an import path")
    try:
        runner = make_engine(engine, workers=workers, address=address,
                             max_retries=max_retries)
    except EngineError as exc:
        raise StudyError(str(exc)) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".normlab-write-test").write_text("ok")
        (out / ".normlab-write-test").unlink()
    except OSError as exc:
        raise StudyError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    try:
        lock = folder_lock(out)
        lock.__enter__()
    except FolderBusy as exc:
        raise StudyError(f"--out {exc}") from None
    try:
        settings["workers"] = workers
        settings["engine"] = engine
        write_atomic(out / "config.json", json.dumps(settings, indent=2, sort_keys=True))
        try:
            counts, rows = run_all(plan, out / "results.jsonl", engine=runner,
                                   progress=progress, stream=stream)
        finally:  # interrupted too: the page's comparisons from the rows that finished
            _write_claims(out, settings)
        keys = set(settings["run_keys"])
        current = list({r["key"]: r for r in rows if r.get("key") in keys}.values())
        advice = advise(current)
        if render is not None:
            render(out)
        return {"rows": current, "advice": advice, "counts": counts, "settings": settings}
    finally:
        lock.__exit__(None, None, None)


def _write_claims(out: Path, settings: dict) -> None:
    from normlab.results import read_rows

    rows, _ = read_rows(out / "results.jsonl")
    keys = set(settings["run_keys"])
    current = list({r["key"]: r for r in rows if r.get("key") in keys}.values())
    write_atomic(out / "claims.json", json.dumps({"claims": study_claims(current)}, indent=2))
