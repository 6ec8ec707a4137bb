"""Train one run of the lab: a resolved config in, the metrics of every evaluation out.

A run is deterministic given its config (seed included) on one machine: the process is pinned
first (:func:`pin_run`), then initialization and batch order are seeded; no nondeterministic
kernels on CPU. So the rows are the same whichever engine and process ran the run.
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.distributed as dist
from torch import nn

from normlab import distributed
from normlab.lab import data as datasets
from normlab.lab.models import CNN, MLP, SeqCNN, SeqRNN, Transformer, hidden_inputs

__all__ = ["build_model", "data_key", "load_data", "pin_run", "train_run", "warmup_factor"]

_PROBE_BATCH = 512  # test examples the activation probe looks at


def pin_run() -> None:
    """Set what a run's numbers depend on beyond its config, the same in every process that
    trains one (a local worker, a Ray task, the driver itself): the one place both engines go
    through (``train_run`` calls it first; the engines' workers call it when they start).

    One torch thread: torch's reductions split their sums over its threads, and normlab's
    numba kernels run on torch's thread count; on one thread they are the serial twins
    (``normlab.kernels.cpu.norm``), whose numbers are the same whether this process compiled
    them or loaded them from numba's disk cache, which the parallel kernels' are not (a Ray
    worker that compiled the kernels trained the digits a few ulps away from a local worker
    that loaded them). The run's data are built by numpy in float64 (``lab.data``), so they do
    not depend on the thread count of the process that builds them (a Ray driver)."""
    torch.set_num_threads(1)


def warmup_factor(step: int, warmup: int) -> float:
    """The learning rate's multiplier at training step ``step`` (1-based): a linear warm-up
    from ``1 / warmup`` at the first step to 1 at step ``warmup``, then 1 (0: no warm-up)."""
    return 1.0 if warmup <= 0 else min(1.0, step / warmup)


def build_model(cfg: dict, ds: datasets.Dataset) -> nn.Module:
    kind = cfg["model"]
    if kind == "mlp":
        return MLP(math.prod(ds.input_shape), ds.num_classes, hidden=tuple(cfg["hidden"]),
                   norm=cfg["norm"], activation=cfg["activation"], placement=cfg["placement"],
                   dropout=cfg["dropout"])
    if kind == "cnn":
        return CNN(ds.input_shape[0], ds.num_classes, ds.input_shape[1:],
                   channels=tuple(cfg["channels"]), norm=cfg["norm"],
                   activation=cfg["activation"], kernel_size=cfg["kernel_size"],
                   stride=cfg["stride"], placement=cfg["placement"])
    if kind == "rnn":
        return SeqRNN(ds.input_shape[-1], ds.num_classes, hidden=cfg["rnn_hidden"],
                      norm=cfg["norm"], max_steps=ds.input_shape[0])
    if kind == "seqcnn":
        return SeqCNN(ds.input_shape[-1], ds.num_classes, channels=tuple(cfg["channels"]),
                      norm=cfg["norm"], activation=cfg["activation"],
                      kernel_size=cfg["kernel_size"], mask_norm=cfg["mask_norm"])
    if kind == "transformer":
        return Transformer(datasets.TOKEN_VOCAB, ds.num_classes, ds.input_shape[0],
                           width=cfg["d_model"], heads=cfg["heads"], layers=cfg["layers"],
                           norm=cfg["norm"], position=cfg["norm_position"],
                           qk_norm=cfg["qk_norm"])
    raise ValueError(f"model must be mlp, cnn, rnn, seqcnn or transformer, got {kind!r}")


def data_key(cfg: dict):
    """What identifies the data set a run trains on (runs with equal keys share one), or None
    for a run that makes its own data (the stylizer; a user study's run, whose data factory
    runs where the run runs)."""
    if cfg.get("study") or cfg["model"] == "stylizer":
        return None
    if cfg["data"] == "mnist1d_seq":
        long = cfg["long_lengths"] or None
        return ("mnist1d_seq", tuple(tuple(s) for s in cfg["seq_lengths"]),
                None if long is None else tuple(tuple(s) for s in long))
    return (cfg["data"],)


def load_data(cfg: dict) -> datasets.Dataset:
    """The run's data set: fixed (seed 0) for every run of a claim."""
    if cfg["data"] == "mnist1d_seq":
        spans = tuple(tuple(s) for s in cfg["seq_lengths"])
        long = tuple(tuple(s) for s in cfg["long_lengths"]) or None
        return datasets.sequences(spans, long)
    if cfg["data"] == "mnist1d_tokens":
        return datasets.tokens(0)
    return datasets.load(cfg["data"], 0)


def _forward(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None):
    return model(x) if lengths is None else model(x, lengths)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              lengths: torch.Tensor | None = None) -> tuple[float, float]:
    with torch.no_grad():
        logits = _forward(model, x, lengths)
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    return acc, loss


def _unpadded(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              lengths: torch.Tensor) -> tuple[float, float]:
    """Every sequence cut to its real length (the sequences of each length form one batch
    without padding: what serving one request at a time computes) -> (accuracy, fraction of
    predictions that differ from the padded evaluation's)."""
    correct = changed = 0
    with torch.no_grad():
        padded = model(x, lengths).argmax(1)
        for length in lengths.unique().tolist():
            idx = (lengths == length).nonzero().squeeze(1)
            pred = model(x[idx, :length], lengths[idx]).argmax(1)
            correct += int((pred == y[idx]).sum())
            changed += int((pred != padded[idx]).sum())
    return correct / len(y), changed / len(y)


def _bn_eval_model(model: nn.Module, cfg: dict, ds: datasets.Dataset, seed: int):
    """The model to evaluate for ``cfg["bn_eval"]``: ``ema`` the model itself (running
    statistics), ``precise`` a copy with population statistics recomputed over
    ``precise_samples`` training samples in batches of the training batch size
    (``surgery.precise_batch_norm``); for ``batch`` see :func:`_batch_stats_accuracy`."""
    if cfg["bn_eval"] != "precise":
        return model
    from normlab.surgery import precise_batch_norm

    bs = cfg["batch_size"]
    order = torch.randperm(ds.x_train.shape[0], generator=torch.Generator().manual_seed(
        20_000 + seed))[: max(cfg["precise_samples"], bs)]
    batches = [ds.x_train[idx] for idx in order.split(bs) if len(idx) == bs]
    return precise_batch_norm(model, batches).eval()


def _batch_stats_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          bs: int) -> tuple[float, float]:
    """Accuracy and loss with every batch norm using the statistics of its own test batch of
    ``bs`` samples (training mode on a copy, so the model's running statistics stay)."""
    m = copy.deepcopy(model).train()
    with torch.no_grad():
        logits = torch.cat([m(xb) for xb in x.split(bs)])
        loss = nn.functional.cross_entropy(logits, y).item()
    return (logits.argmax(1) == y).float().mean().item(), loss


def _percentiles(t: torch.Tensor) -> list[float]:
    q = torch.tensor([0.15, 0.50, 0.85])
    return torch.quantile(t.float(), q).tolist()


def train_run(cfg: dict, ds: datasets.Dataset | None = None) -> dict:
    """Train per ``cfg`` on ``ds`` (default: ``load_data(cfg)``, what ``ds`` must equal);
    returns ``{"status", "error", "evals": [...], "final": {...}}``.

    ``status`` is ``ok``, ``diverged`` (the loss became NaN/inf: training stops, accuracies are
    then measured as they are) or ``error`` (the model refused the input, e.g. batch norm on
    one value per channel; ``error`` holds the message).
    """
    pin_run()
    if cfg.get("study"):  # a run of `normlab study`: the user's model and data
        from normlab.lab.userstudy import train_user

        return train_user(cfg)
    if cfg["model"] == "stylizer":  # the style-contrast claim: a generator, not a classifier
        from normlab.style.feedforward import train_stylizer

        t0 = time.perf_counter()
        out = train_stylizer(cfg["norm"], cfg["seed"], steps=cfg["steps"])
        return {**out, "train_seconds": time.perf_counter() - t0, "processes": 1}
    torch.manual_seed(cfg["seed"])
    ds = load_data(cfg) if ds is None else ds
    model = build_model(cfg, ds)
    world, rank = distributed.world_size(), distributed.rank()
    # data-parallel (under torchrun): each process trains on its slice of every batch, batch
    # norm synchronized, gradients averaged by DDP: the same training as one process. A batch
    # smaller than the number of processes runs whole on every process.
    dp = world > 1 and cfg["batch_size"] >= world
    if dp:
        from torch.nn.parallel import DistributedDataParallel

        from normlab.surgery import convert_sync_batchnorm

        # buffers are averaged over the processes after each step (below) instead of copied
        # from process 0, so every process holds the same ones. A ghost-batch layer's running
        # statistics then move by the average of the processes' chunk-by-chunk updates, where
        # one process applies all the chunks in sequence: close, not equal (ghost batch norm
        # still trains exactly as in one process; batch renorm's r and d read the running
        # statistics, so its training differs slightly too)
        model = DistributedDataParallel(convert_sync_batchnorm(model), broadcast_buffers=False)
        float_buffers = [b for b in model.buffers() if b.is_floating_point()]
    if cfg["optimizer"] == "adam":  # the recurrent claims (plain SGD trains LSTMs slowly)
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    gen = torch.Generator().manual_seed(10_000 + cfg["seed"])
    n, bs = ds.x_train.shape[0], cfg["batch_size"]
    train_eval = torch.randperm(n, generator=torch.Generator().manual_seed(7))[:1000]
    probe_x = ds.x_test[:_PROBE_BATCH]
    shifts = cfg.get("test_shifts") or []
    evals: list[dict] = []
    status, error = "ok", None

    def evaluate(step: int, loss: float | None) -> None:
        model.eval()
        if cfg["bn_eval"] == "batch":
            test_acc, test_loss = _batch_stats_accuracy(model, ds.x_test, ds.y_test, bs)
            train_acc, _ = _batch_stats_accuracy(model, ds.x_train[train_eval],
                                                 ds.y_train[train_eval], bs)
        else:
            judged = _bn_eval_model(model, cfg, ds, cfg["seed"])
            test_acc, test_loss = _accuracy(judged, ds.x_test, ds.y_test, ds.len_test)
            train_acc, _ = _accuracy(judged, ds.x_train[train_eval], ds.y_train[train_eval],
                                     None if ds.len_train is None
                                     else ds.len_train[train_eval])
        e = {"step": step, "train_loss": loss, "test_loss": test_loss, "test_acc": test_acc,
             "train_acc": train_acc}
        if isinstance(model, Transformer):  # of the test forward just run
            e["max_attn_logit"] = model.max_attn_logit
            e["train_max_attn_logit"] = train_max_logit[0]
        for name, (xe, ye, le) in ds.extra.items():  # e.g. longer test sequences
            e[f"test_acc_{name}"] = _accuracy(model, xe, ye, le)[0]
        if cfg["eval_unpadded"]:  # each test sequence at its own length, no padding
            e["test_acc_unpadded"], e["changed_unpadded"] = _unpadded(
                model, ds.x_test, ds.y_test, ds.len_test)
        for s in shifts:
            e[f"test_acc_{s}"] = _accuracy(model, datasets.shifted(ds.x_test, s), ds.y_test)[0]
        if cfg.get("probe"):
            # the input of unit 0 of each hidden layer's activation, on fixed test examples
            e["probe"] = [_percentiles(h.transpose(0, 1).reshape(h.shape[1], -1)[0])
                          for h in hidden_inputs(model, probe_x)]
        evals.append(e)
        model.train()

    perm = torch.randperm(n, generator=gen)
    pos, loss_value = 0, None  # no training loss before the first step
    train_max_logit = [None]  # the largest attention logit of the training steps so far
    warmup = cfg["warmup"]
    step_time, steps_done = 0.0, 0
    t0 = time.perf_counter()
    evaluate(0, loss_value)
    for step in range(1, cfg["steps"] + 1):
        if warmup:  # linear learning-rate warm-up over the first `warmup` steps
            for group in opt.param_groups:
                group["lr"] = cfg["lr"] * warmup_factor(step, warmup)
        t_step = time.process_time()  # CPU time: less noisy than wall time when shared
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        if dp:
            idx = idx.tensor_split(world)[rank]
        try:
            lengths = None if ds.len_train is None else ds.len_train[idx]
            loss = nn.functional.cross_entropy(_forward(model, ds.x_train[idx], lengths),
                                               ds.y_train[idx],
                                               reduction="sum" if dp else "mean")
        except ValueError as exc:  # the normalization refused this batch
            status, error = "error", str(exc)
            break
        if dp:  # DDP averages over processes: this share of the batch mean, times the world
            loss = loss * (world / bs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dp:  # the batch's mean loss, identical on every process (they stop together)
            total = loss.detach() / world
            dist.all_reduce(total)
            loss_value = total.item()
            for b in float_buffers:
                dist.all_reduce(b)
                b.div_(world)
        else:
            loss_value = loss.item()
        step_time += time.process_time() - t_step  # forward, backward and update only
        steps_done += 1
        if isinstance(model, Transformer):
            m = model.max_attn_logit
            if math.isfinite(m) and not (train_max_logit[0] is not None
                                         and train_max_logit[0] >= m):
                train_max_logit[0] = m
        if not math.isfinite(loss_value):
            status = "diverged"
            evaluate(step, loss_value)
            break
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            evaluate(step, loss_value)
    train_seconds = time.perf_counter() - t0
    final = dict(evals[-1]) if evals else {}
    final.pop("probe", None)
    if steps_done:  # the mean CPU time of one training step, evaluations excluded
        final["step_ms"] = 1000.0 * step_time / steps_done
    return {"status": status, "error": error, "evals": evals, "final": final,
            "train_seconds": train_seconds, "processes": world if dp else 1,
            "epochs": round(cfg["steps"] * bs / n, 2)}  # as configured: passes over the data
