"""Surgery over the whole zoo: every timm family (its smallest model if under 100M parameters,
its next ones if under 10M; at least 150), every torchvision classification model under 30M
parameters and the Hugging
Face model types of tests/zoo.py, built with random weights (nothing downloaded). For each
model: to_normlab (outputs equal, float64, train and eval), fold_batch_norm and swap_norms to
group/layer/rms, as tests/zoo.py's ``check``. Writes docs/zoo.md (the table the docs show) and
docs/zoo.json (one row per model), each atomically (temp file, then rename).

    pip install -e .[zoo]
    python benchmarks/zoo.py                 # everything, ~30 min on 2 cores (plus ~20 min
                                             # counting timm's parameters on the meta device)
    python benchmarks/zoo.py --only hf       # one source; --limit N for a quick look

Run from the repository root (it imports tests/zoo.py).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import zoo  # noqa: E402


def _init_worker(parent: int) -> None:
    """A worker ends with the benchmark (Linux: the kernel kills it when its parent dies, so an
    interrupted or killed run leaves no model-building processes behind)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _work(entry):
    import torch
    torch.set_num_threads(1)
    return zoo.check(entry).as_dict()


def _sizes(family):
    import torch
    torch.set_num_threads(1)
    return zoo.timm_sizes(family)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _reasons(pairs) -> str:
    c = collections.Counter(f"{cls}: {why}" for cls, why in pairs)
    return "; ".join(f"{n} x {r}" for r, n in c.most_common())


def table(rows, meta) -> str:
    fams = collections.defaultdict(list)
    for r in rows:
        fams[(r["source"], r["family"])].append(r)
    built = [r for r in rows if r["error"] is None]
    n_layers = sum(r["norm_layers"] for r in built)
    n_conv = sum(r["converted"] for r in built)
    n_bn = sum(r["batch_norms"] for r in built)
    n_fold = sum(r["folded"] for r in built)
    failures = [(r["model"], f) for r in built for f in r["failures"]]
    by_src = collections.Counter(r["source"] for r in built)
    lines = [
        "# Surgery over the zoo",
        "",
        f"Made by `{meta['command']}` on {meta['date']} ({meta['versions']}); "
        f"{meta['seconds']:.0f} s. Random weights, nothing downloaded; float64 inputs."
        + (f" **Partial: {len(rows)} of the {meta['listed']} listed models** (the run was "
           "stopped; cheapest first)." if len(rows) < meta["listed"] else ""),
        "",
        f"* models: {len(built)} ({', '.join(f'{s} {n}' for s, n in sorted(by_src.items()))})"
        f" in {len({(r['source'], r['family']) for r in built})} families"
        + (f"; {len(rows) - len(built)} did not build or run (listed below)"
           if len(rows) > len(built) else ""),
        f"* `to_normlab`: {n_conv} of {n_layers} norm layers converted "
        f"({100 * n_conv / max(n_layers, 1):.1f}%), outputs equal in eval (1e-10 relative) and "
        "train (1e-8: rounding compounds through batch statistics of a few values); 1e-5 where "
        "a converted layer computes in float32 whatever its input",
        f"* `fold_batch_norm`: {n_fold} of {n_bn} batch norms folded; foldable batch norms "
        f"left: {sum(len(r['foldable_left']) for r in built)}",
        f"* silent changes or broken checks: {len(failures)}",
        "",
        "| source | family | models | norm layers | converted | batch norms | folded | "
        "left by to_normlab (why) | not folded (why) | swap group/layer/rms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (src, fam), rs in sorted(fams.items()):
        ok = [r for r in rs if r["error"] is None]
        if not ok:
            continue
        swaps = collections.Counter()
        for r in ok:
            for k, v in r["swaps"].items():
                swaps[(k, v.split(" (")[0].split(":")[0])] += 1
        sw = "/".join(",".join(f"{n} {v}" for (k2, v), n in sorted(swaps.items()) if k2 == k)
                      or "-" for k in ("group", "layer", "rms"))
        lines.append(
            f"| {src} | {fam} | {', '.join(r['model'] for r in ok)} | "
            f"{sum(r['norm_layers'] for r in ok)} | {sum(r['converted'] for r in ok)} | "
            f"{sum(r['batch_norms'] for r in ok)} | {sum(r['folded'] for r in ok)} | "
            f"{_reasons([tuple(p) for r in ok for p in r['left']]) or '-'} | "
            f"{_reasons([tuple(p) for r in ok for p in r['not_folded']]) or '-'} | {sw} |")
    if failures:
        lines += ["", "## Failures", ""] + [f"* {m}: {f}" for m, f in failures]
    errors = [r for r in rows if r["error"] is not None]
    if errors:
        lines += ["", "## Models that did not build or run (no surgery involved)", ""]
        lines += [f"* {r['source']} {r['model']}: {r['error']}" for r in errors]
    if meta.get("over_budget"):
        lines += ["", f"torchvision models over the {zoo.TV_PARAM_BUDGET / 1e6:.0f}M parameter"
                  f" budget (not run): {', '.join(meta['over_budget'])}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("timm", "torchvision", "hf"))
    p.add_argument("--limit", type=int, default=0, help="at most N models per source")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (the line per model stays)")
    p.add_argument("--out", default=str(ROOT / "docs" / "zoo.md"))
    p.add_argument("--timm-sizes", help="a JSON file of family -> [[parameters, name], ...] "
                   "from an earlier run (skips counting on the meta device, ~10 min)")
    a = p.parse_args(argv)
    t0 = time.time()
    timm, tv, transformers = zoo.load_zoo()
    entries, over = [], []
    if a.only in (None, "timm"):
        if a.timm_sizes:
            sizes = json.loads(Path(a.timm_sizes).read_text())
        else:  # parameter counts on the meta device, one family per worker
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(a.jobs, mp_context=ctx, initializer=_init_worker,
                                   initargs=(os.getpid(),)) as pool:
                fams = timm.list_modules()
                sizes = dict(zip(fams, pool.map(_sizes, fams), strict=True))
        entries += zoo.timm_entries(sizes)[: a.limit or None]
    if a.only in (None, "torchvision"):
        tv_entries, over = zoo.torchvision_entries()
        entries += [e.__class__(e.source, e.family, e.name, 64 if "vit" not in e.name else 0)
                    for e in tv_entries][: a.limit or None]
    if a.only in (None, "hf"):
        entries += zoo.hf_entries()[: a.limit or None]
    # cheapest first, so that an interrupted run has the most models (the table is rewritten as
    # rows arrive and says how many of the list it holds)
    params = {n: p for fam in (sizes.values() if a.only in (None, "timm") else []) for p, n in fam}
    entries.sort(key=lambda e: (e.source != "hf", params.get(e.name, 0)))
    print(f"{len(entries)} models", flush=True)
    rows = []
    import torch
    meta = {"versions": f"torch {torch.__version__}, timm {timm.__version__}, torchvision "
                        f"{tv.__version__}, transformers {transformers.__version__}",
            "command": "python benchmarks/zoo.py" + (" " + " ".join(argv or sys.argv[1:])
                                                     if (argv or sys.argv[1:]) else ""),
            "over_budget": over, "date": time.strftime("%Y-%m-%d"), "listed": len(entries)}
    out = Path(a.out)

    def write():
        meta["seconds"] = time.time() - t0
        rows.sort(key=lambda r: (r["source"], r["family"], r["model"]))
        _atomic_write(out, table(rows, meta))
        _atomic_write(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows},
                                                            indent=1, default=str))
    ctx = multiprocessing.get_context("spawn")
    from normlab.progress import Progress

    bar = Progress(len(entries), len(entries), sys.stdout, enabled=not a.no_progress,
                   unit="models")
    with cf.ProcessPoolExecutor(a.jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(os.getpid(),)) as pool:  # (max_tasks_per_child hangs)
        futs = {pool.submit(_work, e): e for e in entries}
        for i, f in enumerate(cf.as_completed(futs), 1):
            e = futs[f]
            try:
                r = f.result()
            except Exception as exc:  # a worker died (memory)
                r = zoo.Result(e.source, e.family, e.name,
                               error=f"worker failed: {type(exc).__name__}: {exc}").as_dict()
            rows.append(r)
            status = r["error"] or ("; ".join(r["failures"]) or "ok")
            bar.log(f"[{i}/{len(entries)}] {e.source} {e.name}: {r['converted']}/"
                    f"{r['norm_layers']} converted, {r['folded']}/{r['batch_norms']} folded, "
                    f"{r['seconds']:.0f} s: {status[:200]}")
            bar.update(1)
            if i % 5 == 0:
                write()
    write()
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
