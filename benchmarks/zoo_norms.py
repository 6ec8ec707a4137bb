"""normlab's default route against torch.nn on the norm layers of real models (timm, Hugging
Face; random weights, nothing downloaded): each model runs once with a forward pre-hook on
every norm layer, each distinct layer input (the layer's class and settings, the input's
shape, dtype and memory layout) is timed forward+backward in training mode, the torch.nn
layer against its ``normlab.surgery.to_normlab`` twin, in alternating order (ABBA) in one
process; the table gives each input's ratio (normlab / torch.nn, median of the repetitions),
how many layers of the model see it and which backend normlab ran, and the model's total over
its norm layers. ``normlab bench`` times two large shapes per kind; this checks the shapes
networks have (7x7 maps, 197-token rows, 96 channels...), where the default route must not be
slower than torch.nn. Rows are appended to a JSONL file as each input finishes.

    flock /tmp/normlab-bench.lock ../shared/tools/jemalloc-run \
        python benchmarks/zoo_norms.py --threads 1 2 --reps 10 [--models resnet50 bert]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "study"))

import zoo_import  # noqa: E402  (torchvision, which timm imports, on a CPU torch)

from normlab import ops  # noqa: E402
from normlab.surgery import to_normlab  # noqa: E402
from normlab.surgery.adapters import looks_like_norm  # noqa: E402


def _timm(name, batch, size=224):
    def build():
        zoo_import.torchvision()
        import timm
        return timm.create_model(name, pretrained=False), (torch.randn(batch, 3, size, size),)
    return build


def _bert(batch, seq=128):
    def build():
        zoo_import.torchvision()
        from transformers import BertConfig, BertModel
        cfg = BertConfig(hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                         intermediate_size=3072)
        return BertModel(cfg), (torch.randint(0, cfg.vocab_size, (batch, seq)),)
    return build


MODELS = {
    "resnet50": _timm("resnet50", 8),
    "efficientnet_b0": _timm("efficientnet_b0", 16),
    "convnext_tiny": _timm("convnext_tiny", 8),
    "vit_small_patch16_224": _timm("vit_small_patch16_224", 16),
    "bert": _bert(16),
}


def _layout(x):
    return "channels_last" if x.dim() == 4 and x.is_contiguous(
        memory_format=torch.channels_last) and not x.is_contiguous() else "contiguous"


def collect(model, inputs):
    """-> [(layer, input, count)], one per distinct (layer settings, input shape/layout)."""
    seen: dict = {}
    hooks = []
    leaves = [m for m in model.modules() if looks_like_norm(m)
              and not any(looks_like_norm(c) for c in m.modules() if c is not m)]

    def hook(m, args):
        x = args[0]
        key = (repr(m), type(m).__name__, tuple(x.shape), x.dtype, _layout(x))
        if key in seen:
            seen[key][2] += 1
        else:
            seen[key] = [m, x.detach().clone(memory_format=torch.preserve_format), 1]

    for m in leaves:
        hooks.append(m.register_forward_pre_hook(hook))
    model.train()
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return list(seen.values())


def _step(layer, x, dy):
    xg = x.detach().requires_grad_()
    t0 = time.perf_counter()
    layer(xg).backward(dy)
    t = time.perf_counter() - t0
    layer.zero_grad(set_to_none=True)
    return t


def time_pair(layer, x, reps):
    theirs = copy.deepcopy(layer).train()
    ours = to_normlab(copy.deepcopy(layer)).train()
    dy = torch.randn_like(theirs(x))
    with ops.trace_backends() as ran:
        ours(x.detach().requires_grad_()).backward(dy)
    ts = {"torch": [], "normlab": []}
    for r in range(reps + 1):
        order = (("torch", theirs), ("normlab", ours))
        for name, m in order if r % 2 else order[::-1]:
            ts[name].append(_step(m, x, dy))
    t, n = (statistics.median(ts[k][1:]) for k in ("torch", "normlab"))
    return t, n, (ran[-1] if ran else "?")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    ap.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default="zoo-norms.jsonl")
    a = ap.parse_args(argv)
    if a.reps < 2:
        ap.error(f"--reps: expected at least 2, got {a.reps}")
    cores = os.cpu_count() or 1
    for n in a.threads:
        if not 1 <= n <= cores:
            ap.error(f"--threads: expected thread counts in [1, {cores}] (the cores), got {n}")
    if not Path(a.out).resolve().parent.is_dir():
        ap.error(f"--out: expected a file in an existing folder, got {a.out!r}")
    torch.manual_seed(0)
    with open(a.out, "a") as out:
        for name in a.models:
            model, inputs = MODELS[name]()
            layers = collect(model, inputs)
            for th in a.threads:
                torch.set_num_threads(th)
                tot_t = tot_n = 0.0
                print(f"{name}, {th} thread(s): {len(layers)} distinct norm inputs")
                for layer, x, count in layers:
                    t, n, ran = time_pair(layer, x, a.reps)
                    tot_t, tot_n = tot_t + count * t, tot_n + count * n
                    row = dict(model=name, threads=th, layer=type(layer).__name__,
                               shape=list(x.shape), layout=_layout(x), count=count,
                               backend=ran, torch_ms=t * 1e3, normlab_ms=n * 1e3,
                               ratio=n / t)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(f"  {type(layer).__name__:<22}{str(tuple(x.shape)):<22}"
                          f"{_layout(x):<14}x{count:<3} {ran:<7} torch {t * 1e3:8.3f} ms  "
                          f"ratio {n / t:.3f}")
                print(f"  all norm layers: torch {tot_t * 1e3:.1f} ms, normlab {tot_n * 1e3:.1f}"
                      f" ms, ratio {tot_n / tot_t:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
