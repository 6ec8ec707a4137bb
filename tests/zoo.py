"""The model zoo of the surgery tests and of ``benchmarks/zoo.py``: real model definitions from
timm, torchvision and Hugging Face transformers, built with random weights (nothing is
downloaded), and the checks every surgery function must pass on each of them.

``check(entry)`` builds one model in float64 and runs, each on a fresh copy:

* ``to_normlab``: outputs equal in eval and in train mode (the same RNG seed for both runs)
  within 1e-10 relative in eval, 1e-8 in train (TRAIN_RTOL), or 1e-5 when a converted layer
  computes in float32 whatever its input (Hugging Face's RMSNorms, timm's *Fp32 norms); every
  layer not converted has a reason;
* ``fold_batch_norm`` (models with batch norms): eval output equal within 1e-10, every batch
  norm folded or left with a reason, and no batch norm left whose input is, at run time, the
  very tensor an exact Conv/Linear returned (forward hooks, independent of torch.fx);
* ``swap_norms`` to group / layer / rms: the model runs with the same output shape, and the
  first swapped layer computes exactly that kind (compared to torch.nn.functional on the input
  it receives in the model).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from normlab.surgery import adapters as ad
from normlab.surgery import fold_batch_norm, swap_norms, to_normlab

EXACT_RTOL = 1e-10
# a whole model in train mode: float64 rounding compounds through every batch norm over a few
# values per channel (2 samples x 1 x 1 at the last stages), so the model-level bound is looser
# than the layer-level 1e-10 each twin meets on its own probes
TRAIN_RTOL = 1e-8
UPCAST_RTOL = 1e-5
TIMM_PARAM_BUDGET = 100e6     # the smallest timm model of a family, if it has at most this many
TIMM_MORE_BUDGET = 10e6       # its further models, if they have at most this many parameters
TV_PARAM_BUDGET = 30e6        # torchvision models (larger ones take minutes each in float64)


# --------------------------------------------------------------------------------------------
# importing the zoo


def _import_torchvision():
    """torchvision's PyPI wheel links CUDA libraries: on a CPU torch its C ops do not load and
    registering their fake kernels raises "operator torchvision::nms does not exist". Its
    Python model code works; tolerate exactly that error during the import."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    orig = torch.library.register_fake

    def tolerant(op, func=None, /, **kwargs):
        def register(f):
            try:
                return orig(op, f, **kwargs)
            except RuntimeError as exc:
                if "does not exist" not in str(exc):
                    raise
                return f
        return register(func) if func is not None else register

    torch.library.register_fake = tolerant
    try:
        import torchvision
    finally:
        torch.library.register_fake = orig
    return torchvision


def load_zoo():
    """(timm, torchvision, transformers); ImportError when the zoo extra is not installed."""
    tv = _import_torchvision()
    import timm
    import transformers
    transformers.logging.set_verbosity_error()
    return timm, tv, transformers


# --------------------------------------------------------------------------------------------
# entries


@dataclass(frozen=True)
class Entry:
    source: str        # timm | torchvision | hf
    family: str        # timm module, torchvision model family, HF model type
    name: str
    size: int = 0      # image side (timm/torchvision); 0: the model's default
    kwargs: tuple = ()  # extra constructor kwargs as (key, value) pairs


def timm_sizes(family: str) -> list[tuple[int, str]]:
    """(parameter count, name) of every model of a timm family (module) that builds on the meta
    device, smallest first."""
    timm, _, _ = load_zoo()
    sized = []
    for name in timm.list_models(module=family):
        try:
            with torch.device("meta"):
                m = timm.create_model(name, pretrained=False)
            sized.append((sum(p.numel() for p in m.parameters()), name))
        except Exception:
            continue
    return sorted(sized)


def timm_entries(sizes: dict[str, list] | None = None, budget=TIMM_PARAM_BUDGET, per_family=2,
                 min_total=150, size=64):
    """The smallest model of every timm family if it has at most ``budget`` parameters, and its
    next ones with at most TIMM_MORE_BUDGET: ``per_family`` each, more until ``min_total``.
    ``sizes``: family -> timm_sizes()."""
    timm, _, _ = load_zoo()
    if sizes is None:
        sizes = {f: timm_sizes(f) for f in timm.list_modules()}
    by_family = {}
    for f, s in sizes.items():
        names = [name for i, (n, name) in enumerate(s)
                 if 0 <= n <= (budget if i == 0 else TIMM_MORE_BUDGET)]
        if names:
            by_family[f] = names
    out = []
    for k in range(1, 50):
        out = [Entry("timm", f, n, size) for f, names in by_family.items() for n in names[:k]]
        if k >= per_family and len(out) >= min_total:
            break
    return out


def _tv_family(name: str) -> str:
    for fam in ("convnext", "densenet", "efficientnet_v2", "efficientnet", "mnasnet",
                "mobilenet_v2", "mobilenet_v3", "regnet", "resnext", "wide_resnet", "resnet",
                "shufflenet", "squeezenet", "swin", "vgg", "vit", "maxvit", "inception",
                "googlenet", "alexnet"):
        if name.startswith(fam):
            return fam
    return name


def torchvision_entries(budget=TV_PARAM_BUDGET):
    """Every torchvision classification model with at most ``budget`` parameters, and the
    names of those over it."""
    _, tv, _ = load_zoo()
    keep, over = [], []
    for name in tv.models.list_models(module=tv.models):
        try:
            with torch.device("meta"):
                m = tv.models.get_model(name, weights=None)
        except Exception:  # regnet computes its widths with tensors: count on the CPU
            m = tv.models.get_model(name, weights=None)
        n = sum(p.numel() for p in m.parameters())
        (keep if n <= budget else over).append(name)
    return [Entry("torchvision", _tv_family(n), n) for n in keep], over


# model type -> (kind, config kwargs); kind: decoder | encoder | encoder-decoder
_LLAMA_LIKE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
               "max_position_embeddings": 64}
_BERT_LIKE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "vocab_size": 128, "max_position_embeddings": 64}
_BART_LIKE = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
              "encoder_attention_heads": 4, "decoder_attention_heads": 4,
              "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "vocab_size": 128,
              "max_position_embeddings": 64}
_T5_LIKE = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 2, "num_decoder_layers": 2,
            "num_heads": 4, "vocab_size": 128}
HF_TYPES = {
    "llama": ("decoder", _LLAMA_LIKE), "mistral": ("decoder", _LLAMA_LIKE),
    "helium": ("decoder", {**_LLAMA_LIKE, "head_dim": 8}),
    "qwen2": ("decoder", _LLAMA_LIKE), "qwen3": ("decoder", {**_LLAMA_LIKE, "head_dim": 8}),
    "gemma": ("decoder", {**_LLAMA_LIKE, "head_dim": 8}),
    "gemma2": ("decoder", {**_LLAMA_LIKE, "head_dim": 8}),
    "phi3": ("decoder", {**_LLAMA_LIKE, "pad_token_id": 0}),
    "olmo": ("decoder", _LLAMA_LIKE), "olmo2": ("decoder", _LLAMA_LIKE),
    "cohere": ("decoder", _LLAMA_LIKE), "granite": ("decoder", _LLAMA_LIKE),
    "starcoder2": ("decoder", _LLAMA_LIKE), "stablelm": ("decoder", _LLAMA_LIKE),
    "phi": ("decoder", _BERT_LIKE),
    "gpt2": ("decoder", {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 128,
                         "n_positions": 64}),
    "gpt_neox": ("decoder", _BERT_LIKE),
    "falcon": ("decoder", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "vocab_size": 128}),
    "bloom": ("decoder", {"hidden_size": 32, "n_layer": 2, "n_head": 4, "vocab_size": 128}),
    "opt": ("decoder", {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "vocab_size": 128,
                        "max_position_embeddings": 64, "word_embed_proj_dim": 32}),
    "bert": ("encoder", _BERT_LIKE), "roberta": ("encoder", {**_BERT_LIKE, "pad_token_id": 1}),
    "electra": ("encoder", {**_BERT_LIKE, "embedding_size": 32}),
    "albert": ("encoder", {**_BERT_LIKE, "embedding_size": 16}),
    "distilbert": ("encoder", {"dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 4,
                               "vocab_size": 128, "max_position_embeddings": 64}),
    "t5": ("encoder-decoder", _T5_LIKE), "mt5": ("encoder-decoder", _T5_LIKE),
    "bart": ("encoder-decoder", _BART_LIKE), "mbart": ("encoder-decoder", _BART_LIKE),
    "pegasus": ("encoder-decoder", _BART_LIKE),
}


def hf_entries():
    return [Entry("hf", t, t) for t in HF_TYPES]


# --------------------------------------------------------------------------------------------
# building


def build(entry: Entry):
    """(float64 model in train mode, example input: a tensor or a dict of keyword inputs)."""
    timm, tv, transformers = load_zoo()
    torch.manual_seed(0)
    kw = dict(entry.kwargs)
    if entry.source == "timm":
        return _build_timm(timm, entry, kw)
    elif entry.source == "torchvision":
        return _build_torchvision(tv, entry, kw)
    else:
        kind, cfg = HF_TYPES[entry.name]
        config = transformers.AutoConfig.for_model(entry.name, **cfg, **kw)
        config._attn_implementation = "eager"
        model = transformers.AutoModel.from_config(config)
        ids = torch.randint(3, 120, (2, 7), generator=torch.Generator().manual_seed(0))
        x = {"input_ids": ids}
        if kind == "encoder-decoder":
            x["decoder_input_ids"] = ids[:, :5]
    model = model.double().train()
    if isinstance(x, torch.Tensor):
        x = x.double()
    _realistic(model, x)
    return model, x


def _build_timm(timm, entry, kw):
    """A timm model at ``entry.size`` (passed as ``img_size`` where the model takes it) or,
    when it does not run at that size, at its default input size."""
    for size in ([entry.size] if entry.size else []) + [0]:
        torch.manual_seed(0)
        model = None
        if size:
            try:
                model = timm.create_model(entry.name, pretrained=False, img_size=size, **kw)
            except Exception:
                model = None
        if model is None:
            model = timm.create_model(entry.name, pretrained=False, **kw)
        cfg = model.pretrained_cfg.get("input_size", (3, 224, 224))
        x = torch.randn(2, cfg[0], size or cfg[-2], size or cfg[-1],
                        generator=torch.Generator().manual_seed(0)).double()
        model = model.double().train()
        try:
            _realistic(model, x)
        except Exception:
            if size:
                continue
            raise
        return model, x


def _build_torchvision(tv, entry, kw):
    """A torchvision model at ``entry.size`` (ViTs built for it) or, when it does not run at
    that size, at its default one."""
    default = 299 if entry.name == "inception_v3" else 224
    for size in ([entry.size] if entry.size else []) + [default]:
        torch.manual_seed(0)
        extra = {"image_size": size} if entry.name.startswith("vit_") else {}
        model = tv.models.get_model(entry.name, weights=None, **extra, **kw).double().train()
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).double()
        try:
            _realistic(model, x)
        except Exception:
            if size != default:
                continue
            raise
        return model, x


def _realistic(model: nn.Module, x) -> None:
    """Non-trivial norm affines and running statistics: random weight and bias on every
    norm-like layer, then one training-mode forward (batch norms' running statistics move)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if not ad.looks_like_norm(m):
                continue
            for name in ("weight", "bias"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    r = torch.rand(t.shape, generator=g, dtype=torch.float64).to(t)
                    t.copy_(0.7 + 0.6 * r if name == "weight" else 0.4 * r - 0.2)
        run(model, x)


def run(model: nn.Module, x, seed: int = 0) -> torch.Tensor:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        y = model(**x) if isinstance(x, dict) else model(x)
    return _first_tensor(y)


def _first_tensor(y):
    if isinstance(y, torch.Tensor):
        return y
    if hasattr(y, "last_hidden_state") and y.last_hidden_state is not None:
        return y.last_hidden_state
    vals = list(y.values()) if hasattr(y, "values") else list(y)
    for v in vals:
        t = _first_tensor(v) if not isinstance(v, (int, float, str, type(None))) else None
        if t is not None:
            return t
    return None


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-300)).item()


# --------------------------------------------------------------------------------------------
# the checks


@dataclass
class Result:
    source: str
    family: str
    model: str
    params: int = 0
    norm_layers: int = 0
    converted: int = 0
    left: list = field(default_factory=list)          # (class, reason)
    to_normlab_err: dict = field(default_factory=dict)  # mode -> relative error
    to_normlab_tol: float = EXACT_RTOL
    batch_norms: int = 0
    folded: int = 0
    not_folded: list = field(default_factory=list)     # (class, reason)
    foldable_left: list = field(default_factory=list)  # paths
    fold_err: float | None = None
    fold_method: str | None = None
    swaps: dict = field(default_factory=dict)          # kind -> "ok" | "refused: ..." | error
    failures: list = field(default_factory=list)       # silent changes and broken checks
    seconds: float = 0.0
    error: str | None = None                           # the model itself did not build/run

    def as_dict(self):
        return asdict(self)


def _upcast_converted(model, report) -> bool:
    for path, _, _ in report.changed:
        m = model.get_submodule(path) if path else model
        try:
            if ad.read(m).upcast:
                return True
        except ad.Refused:
            pass
    return False


def check_to_normlab(model, x, res: Result, ref_eval: torch.Tensor) -> None:
    new, report = to_normlab(model, return_report=True)
    res.norm_layers = len(report.changed) + len(report.left)
    res.converted = len(report.changed)
    res.left = [(cls, why) for _, cls, why in report.left]
    if any(not why for _, _, why in report.left):
        res.failures.append("to_normlab left a layer without a reason")
    tol = UPCAST_RTOL if _upcast_converted(model, report) else EXACT_RTOL
    res.to_normlab_tol = tol
    for mode in ("eval", "train"):
        a = ref_eval if mode == "eval" else run(copy.deepcopy(model).train(), x)
        err = rel_err(a, run(getattr(copy.deepcopy(new), mode)(), x))
        if mode == "train" and not err <= tol \
                and not torch.equal(a, run(copy.deepcopy(model).train(), x)):
            res.to_normlab_err[mode] = "not deterministic"  # two runs of the original differ
            continue
        res.to_normlab_err[mode] = err
        if not err <= (max(tol, TRAIN_RTOL) if mode == "train" else tol):
            res.failures.append(f"to_normlab: {mode} output differs by {err:.2g} > {tol:g}")


def _batch_norm_paths(model) -> dict[str, nn.Module]:
    out = {}
    for path, m in model.named_modules():
        try:
            if ad.adapter_for(m) is not None and ad.read(m).kind in ("batch", "frozen"):
                out[path] = m
        except ad.Refused:
            if "batch" in type(m).__name__.lower() or isinstance(
                    m, nn.modules.batchnorm._BatchNorm):
                out[path] = m
    return out


def _foldable_left(folded: nn.Module, x) -> list[str]:
    """Batch norms of the folded model whose input is the very tensor an exact Conv/Linear
    returned, seen at run time by forward hooks (no torch.fx)."""
    exact = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    produced, bad, hooks = {}, [], []
    for path, m in folded.named_modules():
        if type(m) in exact:
            # keep the tensor alive, so that its id is not reused during the forward
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, p=path: produced.__setitem__(id(out), (p, out))))
    for path, m in _batch_norm_paths(folded).items():
        hooks.append(m.register_forward_pre_hook(
            lambda mod, inp, p=path: bad.append(p) if inp and id(inp[0]) in produced
            and ad.read(mod).running_mean is not None else None))
    try:
        run(folded, x)
    finally:
        for h in hooks:
            h.remove()
    return sorted(set(bad))


def check_fold(model, x, res: Result, ref_eval: torch.Tensor) -> None:
    bns = _batch_norm_paths(model)
    res.batch_norms = len(bns)
    if not bns:
        return
    folded, report = fold_batch_norm(model)
    res.fold_method = report.method
    res.folded = len(report.folded)
    res.not_folded = [(type(model.get_submodule(p)).__qualname__, why)
                      for p, why in report.not_folded]
    if len(report.folded) + len(report.not_folded) != len(bns):
        res.failures.append(f"fold accounts for {len(report.folded) + len(report.not_folded)}"
                            f" of {len(bns)} batch norms")
    err = rel_err(ref_eval, run(folded, x))
    res.fold_err = err
    if not err <= EXACT_RTOL:
        res.failures.append(f"fold: eval output differs by {err:.2g}")
    why = dict(report.not_folded)
    left = [p for p in _foldable_left(folded, x) if "used elsewhere" not in why.get(p, "")]
    res.foldable_left = left
    if left:
        res.failures.append(f"fold left {len(left)} foldable batch norm(s): {left[:3]}")


def _reference(kind: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torch.nn.functional's result of ``kind`` on ``x`` with the layer's parameters."""
    F = nn.functional
    axis = layer.channel_axis
    h = x.movedim(axis, 1) if kind == "group" else x.movedim(axis, -1)
    if kind == "group":
        y = F.group_norm(h, layer.num_groups, layer.weight, layer.bias, layer.eps).movedim(1,
                                                                                          axis)
    elif kind == "layer":
        y = F.layer_norm(h, layer.normalized_shape, layer.weight, layer.bias,
                         layer.eps).movedim(-1, axis)
    else:
        y = F.rms_norm(h, layer.normalized_shape, layer.weight, layer.eps).movedim(-1, axis)
    act = {None: lambda t: t, "relu": torch.relu, "gelu": F.gelu, "silu": F.silu}
    return act[layer.activation](y)


def check_swaps(model, x, res: Result, ref_eval: torch.Tensor,
                kinds=("group", "layer", "rms")) -> None:
    ref_shape = ref_eval.shape
    for kind in kinds:
        try:
            new, report = swap_norms(model, kind, return_report=True)
        except Exception as exc:  # SurgeryError: an explained refusal
            res.swaps[kind] = f"refused: {exc}"
            continue
        if not report.changed:
            res.swaps[kind] = "nothing to swap"
            continue
        path = report.changed[0][0]
        layer = new.get_submodule(path) if path else new
        if isinstance(layer, ad.NormAct):
            layer = layer.norm
        seen = {}
        def grab(m, inp, out, seen=seen):
            seen.setdefault("io", (inp[0].detach().clone(), out.detach().clone()))

        h = layer.register_forward_hook(grab)
        try:
            y = run(new.eval(), x)
        except ValueError as exc:  # normlab's own clear error: an explained refusal
            res.swaps[kind] = f"refused at run time: {str(exc)[:160]}"
            continue
        except Exception as exc:
            res.swaps[kind] = f"FAILED: the swapped model does not run: {exc}"
            res.failures.append(f"swap {kind}: does not run")
            continue
        finally:
            h.remove()
        if y.shape != ref_shape:
            res.swaps[kind] = f"FAILED: output shape {tuple(y.shape)} != {tuple(ref_shape)}"
            res.failures.append(f"swap {kind}: output shape")
            continue
        if "io" not in seen:
            res.swaps[kind] = "ok (the first swapped layer is not called)"
            continue
        xin, out = seen["io"]
        err = rel_err(_reference(kind, layer, xin), out)
        if not err <= EXACT_RTOL:
            res.swaps[kind] = f"FAILED: the swapped layer differs from {kind} norm by {err:.2g}"
            res.failures.append(f"swap {kind}: layer is not {kind} norm")
            continue
        res.swaps[kind] = f"ok ({len(report.changed)} layers)"


def check(entry: Entry, swaps=("group", "layer", "rms")) -> Result:
    t0 = time.perf_counter()
    res = Result(entry.source, entry.family, entry.name)
    try:
        model, x = build(entry)
        res.params = sum(p.numel() for p in model.parameters())
    except Exception as exc:
        res.error = f"does not build/run: {type(exc).__name__}: {str(exc)[:200]}"
        res.seconds = time.perf_counter() - t0
        return res
    ref_eval = run(copy.deepcopy(model).eval(), x)
    for fn in (check_to_normlab, check_fold):
        try:
            fn(model, x, res, ref_eval)
        except Exception as exc:
            res.failures.append(f"{fn.__name__} raised {type(exc).__name__}: {exc}")
    try:
        check_swaps(model, x, res, ref_eval, swaps)
    except Exception as exc:
        res.failures.append(f"check_swaps raised {type(exc).__name__}: {exc}")
    res.seconds = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------------------------
# the fixed sample CI runs (tests/test_zoo.py): the smallest model of every timm family, at a
# small input where it runs there, some torchvision models, every Hugging Face type

_TIMM_SAMPLE = [  # (family, its smallest model): 95 of timm 1.0.31's 98 families have one
    # under TIMM_PARAM_BUDGET (not deepseek_vit, gemma4_vit, vgg)
    ("beit", "beit_base_patch16_224"), ("byoanet", "halonet_h1"), ("byobnet", "test_byobnet"),
    ("cait", "cait_xxs24_224"), ("coat", "coat_tiny"), ("convit", "convit_tiny"),
    ("convmixer", "convmixer_768_32"), ("convnext", "test_convnext"), ("cpubone", "cpubone_nano"),
    ("crossvit", "crossvit_tiny_240"), ("csatv2", "csatv2"), ("cspnet", "cs3darknet_focus_s"),
    ("cspnext", "cspnext_tiny"), ("davit", "davit_tiny"), ("deit", "deit_tiny_patch16_224"),
    ("densenet", "densenet121"), ("dla", "dla46x_c"), ("dpn", "dpn48b"),
    ("edgenext", "edgenext_xx_small"), ("efficientformer", "efficientformer_l1"),
    ("efficientformer_v2", "efficientformerv2_s0"), ("efficientnet", "test_efficientnet"),
    ("efficientvim", "efficientvim_m1"), ("efficientvit_mit", "efficientvit_b0"),
    ("efficientvit_msra", "efficientvit_m0"), ("eva", "vit_tiny_patch16_dinov3_qkvb"),
    ("fasternet", "fasternet_t0"), ("fastvit", "fastvit_t8"), ("focalnet", "focalnet_tiny_srf"),
    ("gcvit", "gcvit_xxtiny"), ("ghostnet", "ghostnet_050"), ("hardcorenas", "hardcorenas_b"),
    ("hgnet", "hgnetv2_b0"), ("hiera", "hiera_tiny_224"), ("hieradet_sam2", "sam2_hiera_tiny"),
    ("hrnet", "hrnet_w18_small"), ("iformer", "iformer_t"),
    ("inception_next", "inception_next_atto"), ("inception_resnet_v2", "inception_resnet_v2"),
    ("inception_v3", "inception_v3"), ("inception_v4", "inception_v4"),
    ("lcnetv2", "lcnetv2_small"), ("levit", "levit_128s"), ("lowformer", "lowformer_b0"),
    ("mambaout", "test_mambaout"), ("maxxvit", "test_coatnet"),
    ("metaformer", "poolformerv2_s12"), ("mlp_mixer", "gmlp_ti16_224"),
    ("mobilenetv3", "mobilenetv3_small_050"), ("mobilenetv5", "mobilenetv5_base"),
    ("mobilevit", "mobilevit_xxs"), ("mvitv2", "mvitv2_tiny"),
    ("naflexvit", "naflexvit_base_patch16_parfac_gap"), ("nasnet", "nasnetalarge"),
    ("nest", "nest_tiny"), ("nextvit", "nextvit_small"), ("nfnet", "test_nfnet"),
    ("pit", "pit_ti_224"), ("pnasnet", "pnasnet5large"), ("pvt_v2", "pvt_v2_b0"),
    ("qwen3_vit", "qwen3_vit_88m"), ("rdnet", "rdnet_tiny"), ("regnet", "regnetx_002"),
    ("repghost", "repghostnet_050"), ("repvit", "repvit_m1"), ("res2net", "res2next50"),
    ("resnest", "resnest14d"), ("resnet", "test_resnet"), ("resnetv2", "resnetv2_18"),
    ("rexnet", "rexnet_100"), ("selecsls", "selecsls42"), ("senet", "legacy_seresnet18"),
    ("sequencer", "sequencer2d_s"), ("shvit", "shvit_s1"), ("sknet", "skresnet18"),
    ("starnet", "starnet_s050"), ("swiftformer", "swiftformer_xs"),
    ("swin_transformer", "swin_tiny_patch4_window7_224"),
    ("swin_transformer_v2", "swinv2_tiny_window16_256"),
    ("swin_transformer_v2_cr", "swinv2_cr_tiny_224"), ("tiny_vit", "tiny_vit_5m_224"),
    ("tnt", "tnt_s_legacy_patch16_224"), ("tresnet", "tresnet_m"), ("twins", "twins_svt_small"),
    ("visformer", "visformer_tiny"), ("vision_transformer", "test_vit"),
    ("vision_transformer_hybrid", "vit_tiny_r_s16_p8_224"),
    ("vision_transformer_relpos", "test_vit_relpos"),
    ("vision_transformer_sam", "samvit_base_patch16_224"), ("vitamin", "vitamin_small_224"),
    ("volo", "volo_d1_224"), ("vovnet", "ese_vovnet19b_slim_dw"), ("xception", "legacy_xception"),
    ("xception_aligned", "xception41p"), ("xcit", "xcit_nano_12_p8_224"),
]
SAMPLE_TIMM_FAMILIES = tuple(f for f, _ in _TIMM_SAMPLE)
_TV_SAMPLE = ["resnet18", "densenet121", "convnext_tiny", "efficientnet_b0",
              "mobilenet_v3_small", "regnet_x_400mf", "shufflenet_v2_x0_5", "swin_t",
              "vit_b_32", "googlenet", "mnasnet0_5", "squeezenet1_0"]
# the ViT-style families whose smallest model has ~86M parameters run with 2 blocks here
_SAMPLE_KWARGS = {"beit": (("depth", 2),), "vision_transformer_sam": (
    ("depth", 2), ("global_attn_indexes", ())), "naflexvit": (("depth", 2),),
    "qwen3_vit": (("depth", 2),)}
SAMPLE: list[Entry] = (
    [Entry("timm", f, n, 32, _SAMPLE_KWARGS.get(f, ())) for f, n in _TIMM_SAMPLE]
    + [Entry("torchvision", _tv_family(n), n, 32) for n in _TV_SAMPLE]
    + [Entry("hf", t, t) for t in HF_TYPES])
