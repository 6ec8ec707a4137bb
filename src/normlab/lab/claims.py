"""The lab's studies: one plain, commented config per claim.

Each claim varies the scientific knob (the normalization, or where/how it is used), holds the
rest fixed, and repeats over seeds. A claim expands into runs (resolved configs); its ``effect``
says, as data, how the rows decide the verdict (``normlab.results.stats``): the metric, the arm
claimed better, the baseline arm, whether higher or lower is better, and ``decide``: where the
verdict is taken and why, fixed before any run (``rule`` "seed": the two arms as named, paired
by seed; "area": a sweep's mean over log x at the points where an arm trains). The report reads
the same spec from ``claims.json`` and never imports this module.

A claim's ``setup`` prose says what kind of experiment it is (model family, data, what is
measured) and holds no setting: the report states every setting from the rows, those that
``setup_keys`` names for the claim's runs (``normlab.results.setup``).

Presets: ``default`` (3 seeds, about 100 s on 2 cores), ``quick`` (2 seeds,
shorter training: a smoke run), ``full`` (5 seeds, longer training, wider grids). A claim
with ``presets`` runs only in those presets, or when ``--only`` names it.
"""

from __future__ import annotations

import copy

from normlab.lab.checks import Bool, ListOf, Number, OneOf, Span, Tagged, check_settings
from normlab.lab.data import DATASETS
from normlab.lab.models import ACTIVATIONS, MLP_RATIO, RENORM
from normlab.registry import list_norm_layers

__all__ = ["BASE", "CHECKS", "CLAIMS", "PRESETS", "RULES", "check_run", "check_settings",
           "expand", "resolve_base", "setup_keys", "unavailable"]

# Fixed hyperparameters shared by every run unless a claim overrides them.
BASE = {
    "data": "mnist1d",  # mnist1d | digits | digits_rgb | tabular
    "model": "mlp",  # mlp | cnn
    "hidden": [100, 100],  # MLP widths
    "channels": [16, 16, 16],  # CNN widths
    "kernel_size": 5,
    "stride": 2,
    "norm": "none",
    "activation": "relu",
    "placement": "before",  # norm before the activation, as the BN paper places it
    "dropout": 0.0,
    "optimizer": "sgd",  # sgd | adam
    "lr": 0.05,
    "momentum": 0.9,  # sgd only
    "batch_size": 64,
    "steps": 400,
    "eval_every": 25,
    "probe": False,
    "test_shifts": [],
    # sequence models (model rnn | seqcnn on data mnist1d_seq)
    "rnn_hidden": 32,
    "seq_lengths": [[20, 40]],  # spans the train/test lengths are drawn from
    "long_lengths": [],  # spans of the extra 'long' test set (none when empty)
    "mask_norm": True,  # seqcnn: pass the padding mask to the norms
    "eval_unpadded": False,  # also test every sequence alone at its own length
    "warmup": 0,  # linear learning-rate warm-up over this many steps (0: none)
    # the transformer (model transformer on data mnist1d_tokens)
    "d_model": 32,
    "heads": 4,
    "layers": 2,
    "norm_position": "pre",  # pre (Pre-LN) | post (Post-LN)
    "qk_norm": False,  # normalize queries and keys per head
    # how batch norm is evaluated: ema (running statistics) | precise (population statistics
    # recomputed, surgery.precise_batch_norm) | batch (each test batch's own statistics)
    "bn_eval": "ema",
    "precise_samples": 2000,  # training samples precise statistics average over
}

# What every BASE key must be (checked on the resolved settings and on every run's config,
# before any run: a value outside these would crash a worker or give a meaningless verdict).
_SIZE = Number(1, 4096, integer=True)
CHECKS = {
    "data": OneOf((*DATASETS, "mnist1d_seq", "mnist1d_tokens")),
    "model": OneOf(("mlp", "cnn", "rnn", "seqcnn", "stylizer", "transformer")),
    "hidden": ListOf(_SIZE, min_len=1),  # no hidden layer: no norm, identical arms
    "channels": ListOf(Number(1, 1024, integer=True), min_len=1),
    "kernel_size": Number(1, 15, integer=True),
    "stride": Number(1, 4, integer=True),
    "norm": Tagged(("none", "batch", "layer", "group", "instance", "rms", "dyt"),
                   ("ghost", "renorm")),
    "activation": OneOf(tuple(ACTIVATIONS)),
    "placement": OneOf(("before", "after")),
    "dropout": Number(0, 1, hi_open=True),
    "optimizer": OneOf(("sgd", "adam")),
    "lr": Number(0, 100, lo_open=True),
    "momentum": Number(0, 1, hi_open=True),
    "batch_size": _SIZE,
    "steps": Number(1, 1_000_000, integer=True),
    "eval_every": Number(1, 1_000_000, integer=True),
    "probe": Bool(),
    "test_shifts": ListOf(OneOf(("contrast", "brightness", "colour", "inverted"))),
    "rnn_hidden": _SIZE,
    "seq_lengths": ListOf(Span(), min_len=1),
    "long_lengths": ListOf(Span()),
    "mask_norm": Bool(),
    "eval_unpadded": Bool(),
    "warmup": Number(0, 1_000_000, integer=True),
    "d_model": Number(4, 512, integer=True),
    "heads": Number(1, 16, integer=True),
    "layers": Number(1, 24, integer=True),
    "norm_position": OneOf(("pre", "post")),
    "qk_norm": Bool(),
    "bn_eval": OneOf(("ema", "precise", "batch")),
    "precise_samples": Number(2, 1_000_000, integer=True),
}

_SEQ_MODELS = ("rnn", "seqcnn")
_TOKEN_NORMS = ("none", "layer", "rms", "dyt")  # what the transformer's norms can be
# The few constraints between keys: (keys named in the message, predicate, expectation).
RULES = [
    (("model", "data"), lambda c: c["model"] == "stylizer"
     or ((c["model"] in _SEQ_MODELS) == (c["data"] == "mnist1d_seq")
         and (c["model"] == "transformer") == (c["data"] == "mnist1d_tokens")),
     "models rnn and seqcnn need data mnist1d_seq, model transformer needs mnist1d_tokens, "
     "and mlp and cnn need one of " + ", ".join(DATASETS)),
    (("model", "norm"), lambda c: c["norm"] in _TOKEN_NORMS if c["model"] == "transformer"
     else c["norm"] not in ("rms", "dyt"),
     "model transformer takes norm " + ", ".join(_TOKEN_NORMS) + "; norms rms and dyt are "
     "for the transformer"),
    (("d_model", "heads"), lambda c: c["d_model"] % c["heads"] == 0,
     "d_model must be a multiple of heads"),
    (("bn_eval", "norm"), lambda c: c["bn_eval"] == "ema" or c["norm"] == "batch"
     or c["norm"].startswith(("ghost:", "renorm:")),
     "bn_eval precise or batch needs a batch-norm kind (batch, ghost:K, renorm:K)"),
    (("model", "data"), lambda c: c["model"] != "cnn" or c["data"] != "tabular",
     "model cnn needs data with positions (mnist1d, digits, digits_rgb), not tabular"),
    (("norm", "model"), lambda c: c["norm"] != "instance" or c["model"] != "mlp",
     "norm instance needs positions: a cnn, seqcnn or stylizer model, not mlp"),
    (("model", "norm"), lambda c: c["model"] != "stylizer" or c["norm"] in ("batch", "instance"),
     "model stylizer takes norm batch or instance"),
    (("test_shifts", "data"), lambda c: not c["test_shifts"]
     or c["data"] in ("digits", "digits_rgb"), "test_shifts need image data (digits, "
     "digits_rgb)"),
]


# The settings each model reads (the setup line states these, from the rows); the rest of
# BASE does not change what such a run computes.
_MODEL_KEYS = {
    "mlp": ("data", "hidden", "activation", "placement", "dropout"),
    "cnn": ("data", "channels", "kernel_size", "stride", "activation", "placement"),
    "rnn": ("data", "seq_lengths", "long_lengths", "rnn_hidden"),
    "seqcnn": ("data", "seq_lengths", "channels", "kernel_size", "activation"),
    "stylizer": (),  # its architecture, data and optimizer are fixed (lab.style.feedforward)
    "transformer": ("data", "d_model", "heads", "layers", "norm_position", "qk_norm"),
}
# not stated when off in every run
_OFF = {"dropout": 0.0, "long_lengths": [], "warmup": 0, "bn_eval": "ema"}


def setup_keys(runs: list[dict]) -> list[str]:
    """The settings the setup line of a claim with these resolved runs states, in order."""
    keys: list[str] = []
    for cfg in runs:
        training = ["steps"] if cfg["model"] == "stylizer" else [
            "optimizer", "lr", *(["momentum"] if cfg["optimizer"] == "sgd" else []),
            "batch_size", "steps", "warmup", "epochs", "eval_every", "bn_eval",
            *(["precise_samples"] if cfg["bn_eval"] == "precise" else [])]
        for k in ("model", *_MODEL_KEYS[cfg["model"]], *training):
            if k not in keys:
                keys.append(k)
    return [k for k in keys if k not in _OFF or any(c[k] != _OFF[k] for c in runs)]


def check_run(cfg: dict, where: str = "", overridden=()) -> str | None:
    """The first problem of a resolved config (``CHECKS``, then ``RULES``), or None."""
    return check_settings(cfg, CHECKS, RULES, where, overridden)


PRESETS = {
    "default": {"seeds": 3, "steps_scale": 1.0, "full": False},
    "quick": {"seeds": 2, "steps_scale": 0.15, "full": False},
    "full": {"seeds": 5, "steps_scale": 2.0, "full": True},
}

_CNN_1D = {"model": "cnn", "data": "mnist1d", "kernel_size": 5, "stride": 1,
           "channels": [16, 16, 16]}
_CNN_DIGITS = {"model": "cnn", "kernel_size": 3, "stride": 1, "channels": [16, 16]}


def _arms(arms, **common):
    return [{"arm": name, "x": x, **common, **over} for name, x, over in arms]


def _faster_training(full):
    # Steps to reach a test accuracy, 1D CNN on MNIST-1D, same learning rate for every norm.
    return _arms([(k, None, {"norm": k}) for k in ("none", "batch", "layer", "group",
                                                   "instance")], **_CNN_1D, steps=300)


def _higher_lr(full):
    # Final accuracy over a learning-rate grid (plain SGD, MLP); the verdict is the mean
    # accuracy over log rate at the rates where an arm trains (``_LR_DECISION``).
    rates = [0.03, 0.3, 1.0, 3.0] if not full else [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    return [{"arm": norm, "x": lr, "norm": norm, "lr": lr, "momentum": 0.0, "steps": 300}
            for norm in ("none", "batch") for lr in rates]


def _small_batch(full):
    # Batch norm over ghost groups of k samples inside a fixed batch of 64 (the statistics'
    # batch size varies, the number of steps and samples seen do not); group and layer norm
    # do not depend on k and are run once as flat references.
    ks = [2, 4, 8, 16, 64] if not full else [2, 4, 8, 16, 32, 64]
    runs = [{"arm": f"batch:k={k}", "x": k, "norm": "batch" if k == 64 else f"ghost:{k}"}
            for k in ks]
    runs += [{"arm": "group", "x": None, "norm": "group"}, {"arm": "layer", "x": None,
                                                             "norm": "layer"}]
    return runs


def _remedies(full):
    # At a per-process batch of k samples: batch norm (statistics over k), batch
    # renormalization over k, and synchronized batch norm over 2 processes (statistics over
    # 2k: what SyncBatchNorm computes; here as batch norm over ghost groups of 2k, which the
    # multi-process tests show to be the same statistics); group norm as the flat reference.
    ks = [2, 4, 8] if not full else [2, 4, 8, 16]
    runs = []
    for k in ks:
        runs += [{"arm": f"batch:k={k}", "x": k, "norm": f"ghost:{k}"},
                 {"arm": f"renorm:k={k}", "x": k, "norm": f"renorm:{k}"},
                 {"arm": f"sync(2 processes):k={k}", "x": k, "norm": f"ghost:{2 * k}"}]
    return runs + [{"arm": "group", "x": None, "norm": "group"}]


def _batch_size_one(full):
    # Online learning: one example per step. In the MLP on the tabular set batch norm sees
    # one value per feature and cannot train at all; layer norm trains. In a CNN batch norm
    # still has the positions to average over, trains, and evaluates with running averages of
    # per-example statistics (shown, not part of the verdict).
    tab = {"data": "tabular", "batch_size": 1, "lr": 0.01, "steps": 400}
    cnn = {**_CNN_DIGITS, "data": "digits", "batch_size": 1, "lr": 0.01, "steps": 400}
    return [{"arm": "batch", "x": None, "norm": "batch", **tab},
            {"arm": "layer", "x": None, "norm": "layer", **tab},
            {"arm": "batch (CNN)", "x": None, "norm": "batch", **cnn},
            {"arm": "layer (CNN)", "x": None, "norm": "layer", **cnn}]


def _style_contrast(full):
    # Ulyanov et al. 2016: the same feed-forward stylizer with batch vs instance norm, trained
    # on the fly; then the same unseen content at normal and at 30% contrast.
    return [{"arm": k, "x": None, "model": "stylizer", "norm": k, "steps": 150}
            for k in ("batch", "instance")]


def _placement(full):
    return [{"arm": "before", "x": None, "norm": "batch", "placement": "before"},
            {"arm": "after", "x": None, "norm": "batch", "placement": "after"}]


def _regularization(full):
    # Train/test gap after long training on MNIST-1D (the MLP overfits it).
    return [{"arm": name, "x": None, "steps": 800, **over} for name, over in
            (("none", {"norm": "none"}), ("dropout", {"norm": "none", "dropout": 0.3}),
             ("batch", {"norm": "batch"}))]


def _contrast(full):
    # Train on coloured digits as given; test on shifted copies. Unpadded convolutions, so a
    # per-channel gain and offset of the input reach instance norm as a per-channel affine
    # map of the first feature map, which it removes (if the gain is positive).
    shifts = ["contrast", "brightness", "colour", "inverted"]
    return [{"arm": k, "x": None, **_CNN_DIGITS, "data": "digits_rgb", "norm": k,
             "test_shifts": shifts, "steps": 300} for k in ("none", "batch", "instance")]


def _activations(full):
    # BN paper Fig. 1b,c: the 15th/50th/85th percentiles of one hidden unit's input over
    # training; sigmoid MLP as in the paper.
    return [{"arm": k, "x": None, "norm": k, "activation": "sigmoid", "probe": True,
             "lr": 0.5, "momentum": 0.0, "steps": 600, "hidden": [100, 100, 100]}
            for k in ("none", "batch")]


_SEQ = {"data": "mnist1d_seq", "optimizer": "adam", "lr": 0.003}


def _seed(why):
    """A verdict taken between the two arms as named, paired by seed."""
    return {"rule": "seed", "why": why}


# Higher learning rates: a comparison at one rate says little (at the grid's top both arms
# may sit at chance; at the bottom both train), so the claim is decided on the whole curve,
# over the rates where it can say something: at least one arm above chance (10 balanced
# classes: 0.1) by 0.1 in mean test accuracy over the seeds.
_LR_DECISION = {
    "rule": "area", "log": True, "trains": {"key": "test_acc", "chance": 0.1, "margin": 0.1},
    "why": "tolerating higher rates means accuracy held over the rates at which training "
           "works at all; a rate where every arm is at chance says nothing about the claim"}


def _recurrent(full):
    # Ba et al. 2016 / Cooijmans et al. 2016: an LSTM over MNIST-1D read as sequences of 20-40
    # steps (each signal resampled to its length), plain vs layer-normalized vs batch-
    # normalized with statistics per time step; also tested on the same test signals
    # resampled to 60-80 steps, longer than any training sequence (batch norm then reuses the
    # last trained step's statistics).
    return [{"arm": k, "x": None, "model": "rnn", "norm": k, **_SEQ, "batch_size": 64,
             "steps": 300, "eval_every": 50, "long_lengths": [[60, 80]]}
            for k in ("none", "layer", "batch")]


def _online_recurrent(full):
    # The batch-size-one claim for the recurrent model: a stream of single sequences.
    return [{"arm": k, "x": None, "model": "rnn", "norm": k, **_SEQ, "batch_size": 1,
             "steps": 600, "eval_every": 100} for k in ("layer", "batch", "none")]


def _padding(full):
    # One conv net (3 same-padded conv layers of 32, batch norm, mean over the real positions)
    # trained on batches of 16 sequences of very different lengths (8-12 or 36-40 steps,
    # zero-padded to the batch): batch norm with the padding mask vs without it. Then every
    # test sequence is served alone at its own length; how many predictions change?
    return [{"arm": name, "x": None, "model": "seqcnn", "norm": "batch", "mask_norm": masked,
             "data": "mnist1d_seq", "seq_lengths": [[8, 12], [36, 40]], "channels": [32] * 3,
             "batch_size": 16, "steps": 300, "eval_every": 50, "eval_unpadded": True}
            for name, masked in (("masked", True), ("unmasked", False))]


# --------------------------------------------------------------------------------------------
# the transformer era: a small Pre-/Post-LN encoder on MNIST-1D read as 20 tokens (Adam)

_TRANSFORMER = {"model": "transformer", "data": "mnist1d_tokens", "norm": "layer",
                "optimizer": "adam", "lr": 0.003, "batch_size": 32, "steps": 200,
                "eval_every": 50}
_HIGH_LR = 0.01  # the rate without warm-up at which Post-LN is tested
_WARMUP = 100  # warm-up steps of the warm-up arms (a third of the run)


def _warmup(full):
    # Xiong et al. 2020: the same encoder with its norms after (Post-LN) or inside (Pre-LN)
    # the residual branches, at one high rate, with and without a linear warm-up. Three
    # layers and 300 steps: with two layers and 200 steps (a first run, 3 seeds) warm-up made
    # no difference to Post-LN at this rate.
    return _arms([(f"{pos}, {'warm-up' if w else 'no warm-up'}", None,
                   {"norm_position": pos, "warmup": w})
                  for pos in ("post", "pre") for w in (0, _WARMUP)],
                 **{**_TRANSFORMER, "lr": _HIGH_LR, "layers": 3, "steps": 300})


def _qk_norm(full):
    # Wortsman et al. 2023: the Pre-LN encoder over a learning-rate grid, with and without
    # layer norm on each head's queries and keys; the largest attention logit is recorded.
    rates = [0.003, 0.01, 0.03] if not full else [0.001, 0.003, 0.01, 0.03, 0.1]
    return [{"arm": name, "x": lr, **_TRANSFORMER, "lr": lr, "qk_norm": qk}
            for name, qk in (("plain", False), ("qk-norm", True)) for lr in rates]


def _dyt(full):
    # Zhu et al. 2025: every layer norm of the Pre-LN encoder replaced by DyT.
    return _arms([(k, None, {"norm": k}) for k in ("layer", "dyt")], **_TRANSFORMER)


def _rms(full):
    # Zhang & Sennrich 2019: layer norm vs RMS norm in the same encoder; accuracy and the
    # time of one training step (CPU time of the worker, evaluations excluded), same runs.
    return _arms([(k, None, {"norm": k}) for k in ("layer", "rms")], **_TRANSFORMER)


def _bn_eval(full):
    # Wu & Johnson 2021: an MLP whose batch norms take their statistics over ghost groups of
    # 4 samples (the normalization batch; 16 groups per batch of 64), trained once per seed
    # (the arms are identical runs) and evaluated three ways.
    return _arms([(k, None, {"bn_eval": k}) for k in ("ema", "precise", "batch")],
                 norm="ghost:4", batch_size=64, steps=400, eval_every=50)


_TRANSFORMER_SETUP = (
    "A small transformer encoder (token and learned position embeddings, blocks of multi-head "
    f"self-attention and a GELU MLP of {MLP_RATIO}x the width, mean over positions, linear "
    "head) on MNIST-1D read as 20 tokens (pairs of the 40 values averaged, then one of 16 "
    "equal-frequency bins); Adam, cross-entropy. ")

_TRANSFORMER_CLAIMS = [
    {"id": "transformer-warmup", "title": "Post-LN transformers need learning-rate warm-up; "
     "Pre-LN ones do not",
     "presets": ("full",),  # transformer runs: about 10 CPU-seconds each; --full or --only
     "build": _warmup,
     "effect": {"metric": "final:test_acc", "arm": "post, warm-up", "baseline": "post, no "
                "warm-up", "better": "higher", "unit": "accuracy",
                "decide": _seed("Post-LN at a high rate: with vs without warm-up, the claim's "
                                "first half"),
                "also": [{"metric": "final:test_acc", "arm": "pre, no warm-up",
                          "baseline": "post, no warm-up", "better": "higher",
                          "unit": "accuracy", "decide": _seed("without warm-up: Pre-LN vs "
                                                              "Post-LN")},
                         {"metric": "final:test_acc", "arm": "pre, no warm-up",
                          "baseline": "pre, warm-up", "better": "higher", "unit": "accuracy",
                          "test": "equivalence", "margin": 0.03,
                          "decide": _seed("Pre-LN without vs with warm-up: as good as, "
                                          "within 3 accuracy points")}]},
     "figure": {"type": "curve", "key": "test_acc", "ylabel": "test accuracy"},
     "paper": "Xiong et al. 2020 (ICML), 'On Layer Normalization in the Transformer "
              "Architecture': at initialization the expected gradients of the parameters "
              "near the output of a Post-LN transformer are large, so a large rate without "
              "warm-up makes training unstable; Pre-LN transformers trained without warm-up "
              "reach comparable results (BERT, IWSLT14 De-En and WMT14 En-De translation) "
              "with less training time.",
     "setup": _TRANSFORMER_SETUP + "Norms after each residual addition (Post-LN) or at the "
              "input of each branch (Pre-LN, with a final norm), the same rate, with a linear "
              "warm-up of the rate or without. Verdict: Post-LN with vs without warm-up; also "
              "Pre-LN vs Post-LN without warm-up, and Pre-LN without vs with warm-up "
              "(equivalence)."},
    {"id": "qk-norm", "title": "QK-norm removes the attention-logit instability at high "
     "learning rates",
     "presets": ("full",),
     "build": _qk_norm,
     "effect": {"metric": "final:test_acc", "arm": "qk-norm", "baseline": "plain",
                "better": "higher", "unit": "accuracy", "decide": {
                    **_LR_DECISION, "why": "the claim is about the rates where plain "
                    "attention becomes unstable: accuracy held over the grid, at the rates "
                    "where training works at all"},
                "also": [{"metric": "final:train_max_attn_logit", "arm": "qk-norm",
                          "baseline": "plain", "better": "lower", "unit": "(logit)",
                          "decide": {**_LR_DECISION, "why": "the largest attention logit of "
                                     "training, over the same rates"}}]},
     "figure": {"type": "sweep", "key": "test_acc", "xlabel": "learning rate (Adam)",
                "logx": True, "ylabel": "final test accuracy"},
     "paper": "Wortsman et al. 2023, 'Small-scale proxies for large-scale Transformer "
              "training instabilities': attention-logit growth, seen before in large models "
              "(Dehghani et al. 2023, ViT-22B), reproduces in small transformers trained at "
              "high learning rates; layer-normalizing queries and keys (qk-layernorm) "
              "mitigates it and lowers the final loss's sensitivity to the learning rate.",
     "setup": _TRANSFORMER_SETUP + "Pre-LN, over a learning-rate grid without warm-up; "
              "plain attention vs queries and keys layer-normalized per head. Verdict: mean "
              "test accuracy over log rate where an arm trains; also the largest attention "
              "logit seen in training."},
    {"id": "dyt-matches-layer-norm", "title": "DyT (tanh, no statistics) is as good as layer "
     "norm",
     "presets": ("full",),
     "needs_norms": ("dyt",),
     "build": _dyt,
     "effect": {"metric": "final:test_acc", "arm": "dyt", "baseline": "layer",
                "better": "higher", "unit": "accuracy", "test": "equivalence",
                "margin": 0.02,
                "decide": _seed("the same encoder with every layer norm replaced by DyT; as "
                                "good as within 2 accuracy points")},
     "figure": {"type": "bars", "key": "test_acc", "ylabel": "final test accuracy"},
     "paper": "Zhu, Chen, He, LeCun & Liu 2025 (CVPR), 'Transformers without Normalization': "
              "DyT = w * tanh(alpha x) + b in place of every norm; ImageNet top-1 ViT-B 82.3% "
              "(LN) -> 82.5% (DyT), ViT-L 83.1% -> 83.6%; LLaMA 7B-70B zero-shot averages "
              "equal. arXiv 2604.23434: DyT gains at 1M training tokens and loses at 118M "
              "(GPT-2 style, 64M parameters).",
     "setup": _TRANSFORMER_SETUP + "Pre-LN; layer norm vs DyT (normlab.nn.DynamicTanh, "
              "alpha initialized at 0.5) in every norm's place. Equivalence test on test "
              "accuracy."},
    {"id": "rms-matches-layer-norm", "title": "RMS norm is as good as layer norm, and cheaper",
     "presets": ("full",),
     "build": _rms,
     "effect": {"metric": "final:test_acc", "arm": "rms", "baseline": "layer",
                "better": "higher", "unit": "accuracy", "test": "equivalence",
                "margin": 0.02,
                "decide": _seed("the same encoder with RMS norm in every layer norm's place; "
                                "as good as within 2 accuracy points"),
                "also": [{"metric": "final:step_ms", "arm": "rms", "baseline": "layer",
                          "better": "lower", "unit": "ms per step",
                          "decide": _seed("CPU time of one training step in the same runs "
                                          "(seeds paired; workers share the machine, so "
                                          "this is noisy)")}]},
     "figure": {"type": "bars", "key": "test_acc", "ylabel": "final test accuracy"},
     "paper": "Zhang & Sennrich 2019 (NeurIPS), 'Root Mean Square Layer Normalization': "
              "comparable performance to LayerNorm, running time reduced by 7%-64% on "
              "different models.",
     "setup": _TRANSFORMER_SETUP + "Pre-LN; layer norm vs RMS norm (normlab's) in every "
              "norm. Equivalence test on test accuracy; also the CPU time per training step "
              "(forward, backward, update; evaluations excluded), measured in the same runs."},
    {"id": "bn-train-test-inconsistency", "title": "At small batches batch norm's running "
     "averages are not the statistics it trained with; precise statistics recover part of "
     "the gap",
     # about 50 CPU-seconds (9 runs); the default study's 2 minutes could not be re-timed
     # on the shared machine with it added, so it waits in --full (or --only)
     "presets": ("full",),
     "build": _bn_eval,
     "effect": {"metric": "final:test_acc", "arm": "precise", "baseline": "ema",
                "better": "higher", "unit": "accuracy",
                "decide": _seed("one training per seed, evaluated with population statistics "
                                "recomputed (surgery.precise_batch_norm) vs the running "
                                "averages (EMA)"),
                "also": [{"metric": "final:test_acc", "arm": "batch", "baseline": "ema",
                          "better": "higher", "unit": "accuracy",
                          "decide": _seed("each test batch normalized with its own "
                                          "statistics, as in training, vs the EMA")}]},
     "figure": {"type": "bars", "key": "test_acc", "ylabel": "final test accuracy"},
     "paper": "Wu & Johnson 2021, 'Rethinking \"Batch\" in BatchNorm': EMA statistics can "
              "lag the model (ResNet-50 at batch 8192: unstable, lower validation accuracy "
              "than PreciseBN, which averages per-batch statistics of the final weights); at "
              "small normalization batches population statistics are inconsistent with the "
              "mini-batch statistics of training. Singh & Shrivastava 2019 (EvalNorm): "
              "corrected evaluation statistics gain 6.18 points (absolute) over plain BN at "
              "batch size 2 on ImageNet.",
     "setup": "MLP on MNIST-1D with batch norm over ghost groups of 4 samples "
              "(normlab.nn.GhostBatchNorm: the normalization batch is 4 inside each batch). "
              "The same training is evaluated three ways: the running averages (EMA, "
              "momentum 0.1, updated once per group), precise population statistics (the "
              "size-weighted average of the statistics of training batches, weights fixed: "
              "normlab.surgery.precise_batch_norm), and each test batch normalized as in "
              "training, with the statistics of its own groups of 4."},
]


def unavailable(claim: dict) -> str | None:
    """Why ``claim`` cannot run in this install (a norm it needs is not registered), or
    None."""
    missing = [n for n in claim.get("needs_norms", ()) if n not in list_norm_layers()]
    if missing:
        return (f"needs the {', '.join(repr(n) for n in missing)} norm layer, which this "
                "normlab's registry does not have yet")
    return None


CLAIMS = [
    {"id": "faster-training", "title": "Batch norm trains faster",
     "build": _faster_training,
     "effect": {"metric": "steps_to:test_acc:0.7", "arm": "batch", "baseline": "none",
                "better": "lower", "unit": "steps",
                "decide": _seed("one learning rate for every arm; seeds where neither arm "
                                "reaches the target are left out (no measurement)")},
     "figure": {"type": "curve", "key": "test_acc", "ylabel": "test accuracy"},
     "paper": "Ioffe & Szegedy 2015: BN-Inception reached Inception's 72.2% top-1 in 14x "
              "fewer steps (2.1M vs 31.0M, with x5 learning rate); Fig. 1a (MNIST): test "
              "accuracy rises faster with BN.",
     "setup": "1D CNN (unpadded convolutions) on MNIST-1D, the same learning rate for every "
              "norm; steps until test accuracy >= 0.7 (runs that never get there count as the "
              "last step + one evaluation)."},
    {"id": "higher-learning-rates", "title": "Batch norm tolerates higher learning rates",
     "build": _higher_lr,
     "effect": {"metric": "final:test_acc", "arm": "batch", "baseline": "none",
                "better": "higher", "unit": "accuracy", "decide": _LR_DECISION},
     "figure": {"type": "sweep", "key": "test_acc", "xlabel": "learning rate", "logx": True,
                "ylabel": "final test accuracy"},
     "paper": "Ioffe & Szegedy 2015, Sec. 4.2: BN-x5 and BN-x30 train at 5 and 30 times "
              "Inception's rate; the x5 rate without BN made the parameters reach machine "
              "infinity.",
     "setup": "MLP on MNIST-1D, plain SGD, one run per learning rate and norm; the verdict "
              "is the mean accuracy over log rate at the rates where an arm trains (mean test "
              "accuracy at least chance 0.1 + 0.1)."},
    {"id": "small-batches", "title": "Small batches hurt batch norm, not group or layer norm",
     "build": _small_batch,
     "effect": {"metric": "final:test_acc", "arm": "batch:k=64", "baseline": "batch:k=2",
                "better": "higher", "unit": "accuracy",
                "decide": _seed("the two ends of the ghost-group grid: statistics over the "
                                "whole batch vs over 2 samples")},
     "figure": {"type": "sweep", "key": "test_acc", "xlabel": "samples per batch-norm "
                "statistics (ghost group k)", "logx": True, "ylabel": "final test accuracy"},
     "paper": "Wu & He 2018, Table 2 (ResNet-50, ImageNet, error %): BN 23.6 at 32 images "
              "per GPU, 34.7 at 2; GN 24.1 at 32 and 24.1 at 2.",
     "setup": "MLP on MNIST-1D, the same batch size for every arm; batch norm's statistics "
              "over ghost groups of k samples (normlab.nn.GhostBatchNorm, virtual_batch_size=k;"
              " k equal to the batch is plain batch norm); the verdict compares k=64 with k=2."},
    {"id": "small-batch-remedies", "title": "Batch renormalization recovers most of the "
     "small-batch loss",
     "build": _remedies,
     "effect": {"metric": "final:test_acc", "arm": "renorm:k=4", "baseline": "batch:k=4",
                "better": "higher", "unit": "accuracy",
                "decide": _seed("sets of 4 samples, the size Ioffe 2017 reports")},
     "figure": {"type": "sweep", "key": "test_acc", "xlabel": "samples per process (ghost "
                "group k)", "logx": True, "ylabel": "final test accuracy"},
     "paper": "Ioffe 2017 (batch renorm), sets of 4 samples: BN 74.2% vs BRN 76.5% top-1 "
              "(ImageNet); Wu & He 2018 at 4 images per GPU: BN 27.3%, batch renorm 26.3%, "
              "GN 24.2% error.",
     "setup": "MLP on MNIST-1D, each batch split into ghost groups of k samples, each a "
              "'process' with its own statistics: batch norm over k (normlab.nn.GhostBatchNorm), "
              "batch renorm over k (normlab.nn.BatchRenorm with virtual_batch_size=k, "
              f"r_max {RENORM['r_max']:g}, d_max {RENORM['d_max']:g} ramped over the first "
              f"{RENORM['warmup_steps']} ghost batches, momentum {RENORM['momentum']:g}; its "
              "running statistics move once per ghost batch), synchronized batch norm over 2 "
              "processes (statistics over 2k); verdict: renorm vs batch norm at k=4."},
    {"id": "batch-size-one", "title": "With one example per step batch norm cannot train an "
     "MLP, layer norm can",
     "build": _batch_size_one,
     "effect": {"metric": "final:test_acc", "arm": "layer", "baseline": "batch",
                "better": "higher", "unit": "accuracy",
                "decide": _seed("the MLP, where batch norm has one value per feature; the "
                                "CNN arms are shown, not decided")},
     "figure": {"type": "bars", "key": "test_acc", "ylabel": "final test accuracy"},
     "paper": "Ba et al. 2016 (layer norm): batch norm depends on the mini-batch and is hard "
              "to apply to online learning (batch size 1); layer norm does not.",
     "setup": "One example per step. An MLP on the breast-cancer table: batch norm refuses "
              "one value per channel (the run stops with that error; its accuracy is the "
              "untrained model's) vs layer norm. Also shown: a 2D CNN on the digits, where "
              "batch norm averages over positions."},
    {"id": "placement", "title": "Batch norm before the activation beats after it",
     "build": _placement,
     "effect": {"metric": "final:test_acc", "arm": "before", "baseline": "after",
                "better": "higher", "unit": "accuracy",
                "decide": _seed("the same network, only the order of norm and activation "
                                "differs")},
     "figure": {"type": "curve", "key": "test_acc", "ylabel": "test accuracy"},
     "paper": "Ioffe & Szegedy 2015, Sec. 3.2: BN is applied to Wu + b, before the "
              "nonlinearity (no accuracy comparison with the other placement is given).",
     "setup": "MLP on MNIST-1D with batch norm, Linear -> BN -> activation vs Linear -> "
              "activation -> BN."},
    {"id": "regularization", "title": "Batch norm regularizes: a smaller train/test gap",
     "build": _regularization,
     "effect": {"metric": "gap", "arm": "batch", "baseline": "none", "better": "lower",
                "unit": "accuracy points",
                "decide": _seed("batch norm against no normalization; dropout is shown as "
                                "the familiar regularizer, not decided")},
     "figure": {"type": "bars", "key": "gap", "ylabel": "train - test accuracy"},
     "paper": "Ioffe & Szegedy 2015, Sec. 3.4: batch norm regularizes; dropout 'can be either "
              "removed or reduced in strength'.",
     "setup": "MLP on MNIST-1D trained long: no normalization, dropout, batch norm; gap = "
              "train accuracy - test accuracy at the end."},
    {"id": "contrast-invariance", "title": "Instance norm removes contrast and colour shifts",
     "build": _contrast,
     "effect": {"metric": "drop:contrast", "arm": "instance", "baseline": "batch",
                "better": "lower", "unit": "accuracy points",
                "decide": _seed("the contrast shift, the one the claim names; the other "
                                "shifts are shown")},
     "figure": {"type": "shifts", "shifts": ["none", "contrast", "brightness", "colour",
                                             "inverted"], "ylabel": "test accuracy"},
     "paper": "Ulyanov et al. 2016 (instance norm, Fig. 2, qualitative): with instance norm "
              "the stylized output no longer depends on the content image's contrast.",
     "setup": "2D CNN (unpadded convolutions) on coloured 8x8 digits, trained as given; "
              "tested on contrast x0.3, brightness +0.5, per-channel colour gains, and "
              "inverted copies (a negative gain: the honest limit). Effect: accuracy lost "
              "under the contrast shift, batch norm minus instance norm."},
    {"id": "style-contrast", "title": "Instance norm makes stylization independent of the "
     "content's contrast",
     "presets": ("full",),  # about a minute of training: in --full, or with --only
     "build": _style_contrast,
     "effect": {"metric": "final:contrast_change", "arm": "instance", "baseline": "batch",
                "better": "lower", "unit": "(relative L2 change)",
                "decide": _seed("the same stylizer with either norm, on one unseen image")},
     "figure": {"type": "images"},
     "paper": "Ulyanov et al. 2016 (instance norm), Fig. 2 (qualitative): with instance norm "
              "in the generator the stylized result no longer depends on the content image's "
              "contrast.",
     "setup": "A 4-layer feed-forward stylizer (reflect-padded 3x3 convs, widths 16-32-16) "
              "trained with Adam on random 64x64 crops of scikit-image's astronaut, "
              "coffee and rocket towards the immunohistochemistry style (AdaIN statistics loss "
              "on a random encoder plus a content loss); measured on the unseen chelsea image: "
              "relative L2 change of the output when its contrast drops to 30%."},
    {"id": "padding-contamination", "title": "Unmasked batch norm makes predictions depend on "
     "the padding",
     "build": _padding,
     "effect": {"metric": "final:changed_unpadded", "arm": "masked", "baseline": "unmasked",
                "better": "lower", "unit": "(fraction of test predictions)",
                "decide": _seed("the same network with and without the padding mask")},
     "figure": {"type": "bars", "key": "changed_unpadded",
                "ylabel": "predictions changed when served unpadded"},
     "paper": "PyTorch issues #70529 and #81985 (open): torch.nn's batch, instance and group "
              "norm have no mask, so padded positions enter the statistics; masked "
              "normalization is the fix proposed there (no published measurement).",
     "setup": "MNIST-1D as sequences resampled to lengths from two ranges (half each), "
              "zero-padded per batch; 1D CNN (same-padded convolutions, batch norm), mean over "
              "the real positions, linear head. Batch norm with the padding mask vs the same "
              "model without it. Measured: the fraction of test sequences whose predicted "
              "class changes when each is run alone at its own length instead of padded in a "
              "batch (eval mode)."},
    {"id": "recurrent-nets", "title": "Layer norm suits recurrent nets; per-step batch norm "
     "fails on sequences longer than any seen in training",
     "presets": ("full",),  # LSTMs step by step in Python: a few minutes; --full or --only
     "build": _recurrent,
     "effect": {"metric": "final:test_acc_long", "arm": "layer", "baseline": "batch",
                "better": "higher", "unit": "accuracy",
                "decide": _seed("the sequences longer than any in training, where per-step "
                                "statistics run out")},
     "figure": {"type": "curve", "key": "test_acc", "ylabel": "test accuracy (20-40 steps)"},
     "paper": "Ba et al. 2016 (layer norm): faster convergence of LSTMs, and batch norm needs "
              "statistics per time step, a problem when a test sequence is longer than the "
              "training ones; Cooijmans et al. 2016 (recurrent batch norm) reuse the last "
              "step's statistics beyond the training length.",
     "setup": "MNIST-1D as sequences of 1 value per step, each signal resampled to a length "
              "of the sequence-length range (padded, with lengths); per-step embedding (Linear "
              "1->16, tanh), one LSTM layer, linear readout of the last real step's state. "
              "Plain LSTM cell vs layer-normalized (Ba et al.) vs batch-normalized per time "
              "step (Cooijmans et al., statistics for each step up to the longest training "
              "sequence). Verdict: accuracy on the test signals resampled to the long lengths."},
    {"id": "online-recurrent", "title": "With one sequence per step batch norm cannot train an "
     "LSTM, layer norm can",
     "presets": ("full",),
     "build": _online_recurrent,
     "effect": {"metric": "final:test_acc", "arm": "layer", "baseline": "batch",
                "better": "higher", "unit": "accuracy",
                "decide": _seed("layer vs batch norm per time step; the plain LSTM is shown")},
     "figure": {"type": "bars", "key": "test_acc", "ylabel": "final test accuracy"},
     "paper": "Ba et al. 2016 (layer norm): batch norm depends on the mini-batch and is hard "
              "to apply to recurrent nets and online learning; layer norm does not.",
     "setup": "The recurrent-nets model trained on a stream of single sequences: batch norm "
              "per time step refuses one value per "
              "channel (the run stops with that error; its accuracy is the untrained model's); "
              "layer-normalized and plain LSTM cells."},
    {"id": "activation-drift", "title": "Batch norm stabilizes the distribution of a unit's "
     "input",
     "build": _activations,
     "effect": {"metric": "drift:-1", "arm": "batch", "baseline": "none", "better": "lower",
                "unit": "(spread units)",
                "decide": _seed("the last hidden layer, as in the paper's figure")},
     "figure": {"type": "probe", "ylabel": "input to unit 0 (15/50/85th percentiles)"},
     "paper": "Ioffe & Szegedy 2015, Fig. 1b,c: the 15th/50th/85th percentiles of a sigmoid's "
              "input in the last hidden layer drift during training without BN and stay "
              "stable with it.",
     "setup": "MLP with sigmoid hidden layers on MNIST-1D, plain SGD; drift = largest move "
              "of the median from its value after the first evaluation, in units of the "
              "initial 15-85 spread; last hidden layer."},
    *_TRANSFORMER_CLAIMS,
]


def resolve_base(overrides: dict | None = None) -> dict:
    base = copy.deepcopy(BASE)
    for k, v in (overrides or {}).items():
        base[k] = v
    return base


def expand(claim: dict, *, seeds: int, steps_scale: float, full: bool,
           base: dict | None = None) -> list[dict]:
    """The resolved run configs of one claim: BASE, then the claim's arm, then the seed."""
    runs = []
    base = base if base is not None else resolve_base()
    for arm in claim["build"](full):
        for seed in range(seeds):
            cfg = {**copy.deepcopy(base), **arm, "claim": claim["id"], "seed": seed}
            # a preset scales training, but never below one evaluation interval (nor above
            # what was configured: --steps=10 stays 10)
            cfg["steps"] = max(min(cfg["eval_every"], cfg["steps"]),
                               int(round(cfg["steps"] * steps_scale)))
            runs.append(cfg)
    return runs
