"""The ``normlab`` command: argparse subcommands.

Exit status: 0 done; 2 one clear line on stderr instead of a traceback: a bad argument or
setting, a folder in use by another lab, a file that cannot be written (a full disk: the rows
already appended stay valid, every other file is whole or untouched); 130 interrupted
(Ctrl-C: the lab keeps every run that finished).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from normlab._version import __version__

_DTYPES = ("float32", "float64", "bfloat16", "float16")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _bounded_int(lo: int, hi: int, why: str = ""):
    """An argparse type: an integer in [lo, hi] (the bound and its reason in the message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}]{why}, got "
                                             f"{text!r}")
        return value
    return parse


def _path(text: str) -> str:
    """An argparse type: a non-empty path (an empty one would silently mean '.')."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


_CORES = os.cpu_count() or 1
_MAX_SHAPE = 1_000_000  # elements of an explained --shape
_MAX_PICTURE = 4096  # elements drawn with explain --out (one cell each)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normlab",
        description="Normalization layers for PyTorch, and a lab that shows what they do.")
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from normlab.bench import CASES

    names = sorted({c.name for c in CASES})
    bench = sub.add_parser(
        "bench", help="time normlab against torch.nn on CPU (ratios, GB/s)",
        description="Time every normalization kind, normlab vs torch.nn, forward and "
                    "forward+backward, alternating the order in one process; append long-format "
                    "rows to a JSONL file and print a table. DynamicTanh and Derf, which "
                    "torch.nn lacks, are timed against the plain torch composition "
                    "w*tanh(a*x)+b, with a layer norm of the same shape for context and the "
                    "bytes each saves for backward. For stable figures run it under "
                    "jemalloc (LD_PRELOAD), e.g. ../shared/tools/jemalloc-run normlab bench.")
    bench.add_argument("--quick", action="store_true",
                       help="smaller shapes and fewer repetitions (about 10 s)")
    bench.add_argument("--out", default="normlab-bench.jsonl", type=_path,
                       help="JSONL file the rows are appended to (default: %(default)s)")
    bench.add_argument("--reps", type=_bounded_int(1, 10_000), default=None,
                       help="alternating repetitions per row (default: 40, or 6 with --quick)")
    bench.add_argument("--dtype", choices=_DTYPES, default="float32",
                       help="input dtype (default: %(default)s)")
    bench.add_argument("--ops", nargs="+", choices=names, metavar="OP",
                       help=f"only these ops: {', '.join(names)}")
    bench.add_argument("--threads", type=_bounded_int(1, _CORES, " (the number of cores)"),
                       nargs="+", default=None, metavar="N",
                       help="torch intra-op threads, at most the number of cores; several "
                            "values run the table at each, e.g. --threads 1 2 (default: "
                            "torch's choice)")

    from normlab.lab.claims import BASE
    from normlab.lab.study import CLAIM_IDS, MAX_SEEDS

    lab = sub.add_parser(
        "lab", help="train small networks with every normalization; write a report",
        description="Train small networks with every normalization kind on built-in data "
                    "(MNIST-1D, scikit-learn's digits and breast-cancer table; MNIST-1D as "
                    "tokens for a small transformer), decide each claim from the rows, and "
                    "write a report folder: index.html, "
                    "results.jsonl (one row per finished run, appended as it finishes), "
                    "summary.json, claims.json, config.json. Rerunning into the same folder "
                    "resumes: finished runs are not repeated. Under torchrun (e.g. torchrun "
                    "--standalone --nproc_per_node=2 -m normlab lab) every run is trained "
                    "data-parallel over the processes with synchronized batch norm.",
        epilog="Overrides of the shared fixed settings, checked against their defaults' types: "
               + ", ".join(f"--{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
                           for k, v in BASE.items())
               + ". A claim that sets a key itself keeps its own value. Every setting is "
                 "checked (range or choices) before any run.")
    lab.add_argument("--out", default="normlab-report", type=_path,
                     help="report folder (default: %(default)s); one lab at a time per folder "
                          "(a second is refused while the first runs)")
    preset = lab.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true",
                        help="smoke run: 2 seeds, 15%% of the steps (~35 s on 2 cores)")
    preset.add_argument("--full", action="store_true",
                        help="5 seeds, twice the steps, wider grids, and the slow claims "
                             "(style-contrast, recurrent-nets, online-recurrent: ~16 min on 2 "
                             "cores; bn-train-test-inconsistency and the transformer claims "
                             "transformer-warmup, qk-norm, dyt-matches-layer-norm, "
                             "rms-matches-layer-norm: about 15 min more, estimated from "
                             "their runs' CPU time)")
    lab.add_argument("--only", metavar="ID,...",
                     help=f"only these claims: {', '.join(CLAIM_IDS)}")
    lab.add_argument("--seeds", type=_bounded_int(1, MAX_SEEDS),
                     help=f"seeds per arm, at most {MAX_SEEDS} (default: by preset); the "
                          "summary names the --seeds that would decide an inconclusive claim, "
                          "and a rerun with more keeps the seeds already finished")
    lab.add_argument("--workers", type=_bounded_int(1, _CORES, " (the number of cores)"),
                     help="worker processes, one torch thread each, at most the number of "
                          "cores (default: all cores, up to 8); with --engine ray and no "
                          "--address, the CPUs of the Ray instance started here")
    lab.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="where the runs run: local (worker processes on this machine, the "
                          "default) or ray (one Ray task per run; needs normlab[ray]); the "
                          "rows are the same")
    lab.add_argument("--address", metavar="HOST:PORT", type=_path,
                     help="with --engine ray: the head of an existing Ray cluster (what `ray "
                          "start --head` printed); without it a Ray instance is started on "
                          "this machine for the lab")
    lab.add_argument("--no-progress", action="store_true", help="no progress bar")

    report = sub.add_parser(
        "report", help="re-render a lab folder's page from its rows, or compare two folders",
        description="Recompute every verdict from DIR/results.jsonl and write DIR/summary.json "
                    "and DIR/index.html. With a second folder OTHER (the same study run on "
                    "another machine or version): recompute both folders' verdicts, print them "
                    "claim by claim with the disagreements flagged, and write the comparison "
                    "page to --out; neither folder is written.")
    report.add_argument("dir", type=_path, help="a folder written by `normlab lab`")
    report.add_argument("other", nargs="?", type=_path,
                        help="a second such folder to compare DIR with")
    report.add_argument("--out", type=_path, default=None,
                        help="with OTHER: the comparison page (default: normlab-compare.html)")

    from normlab.lab.userstudy import MAX_SEEDS as STUDY_MAX_SEEDS

    study = sub.add_parser(
        "study", help="the lab on your own model and data: which normalization to use",
        description="Train the model your factory builds, as given (as-is: its own "
                    "normalization, the baseline) and with other normalizations put in by "
                    "normlab.surgery (swap_norms; remove_norms for none; move_norms for "
                    "@after/@before), at each batch size, "
                    "learning rate and seed, on the data your factory returns (a validation "
                    "split is carved from train, the same for every run). Rows are appended "
                    "to OUT/results.jsonl as runs finish: rerun the same command to resume. "
                    "An arm that cannot run (a surgery refusal, batch norm on a batch of 1) is "
                    "a row with the reason. Then writes OUT/index.html and prints the advice "
                    "(normlab advise OUT).",
        epilog="Factories: --model returns a torch.nn.Module (or accepts norm= and builds the "
               "arm itself); --data returns (train, test), each a map-style Dataset of "
               "(input, ..., target) examples or a DataLoader over one (its batch size is "
               "replaced by --batch-sizes). Both must be importable by worker processes: "
               "put their package on PYTHONPATH.")
    study.add_argument("--model", required=True, metavar="PKG.MOD:FACTORY",
                       help="import path of the model factory")
    study.add_argument("--data", required=True, metavar="PKG.MOD:FACTORY",
                       help="import path of the data factory")
    study.add_argument("--norms", default="as-is,group,layer,none", metavar="NORM,...",
                       help="arms: as-is (always included: the baseline), none, or a registry "
                            "name (batch, group, layer, instance, rms, renorm, ghost, frozen; "
                            "group:G, ghost:K, renorm:K); any but none with @after or @before: "
                            "its norms then moved after (before) their activation, e.g. "
                            "as-is@after, group:4@after (default: %(default)s)")
    study.add_argument("--batch-sizes", default="32", metavar="B,...",
                       help="batch sizes, the scientific knob (default: %(default)s)")
    study.add_argument("--lr", default="0.01,0.03,0.1", metavar="LR,...",
                       help="learning rates; each arm gets its best on the validation split "
                            "(default: %(default)s)")
    study.add_argument("--seeds", type=_bounded_int(1, STUDY_MAX_SEEDS), default=3,
                       help=f"seeds per point, at most {STUDY_MAX_SEEDS}; the advice needs 2 "
                            "or more (default: %(default)s)")
    study.add_argument("--steps", type=_bounded_int(1, 10_000_000), default=500,
                       help="training steps per run (default: %(default)s)")
    study.add_argument("--out", default="normlab-study", type=_path,
                       help="study folder (default: %(default)s); one study at a time per "
                            "folder")
    study.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="cpu (default), or cuda where it is available")
    study.add_argument("--task", choices=("classification", "regression"),
                       default="classification",
                       help="classification: cross-entropy, accuracy; regression: mean squared "
                            "error (default: %(default)s)")
    study.add_argument("--loss", metavar="PKG.MOD:FN",
                       help="a loss(output, target) -> tensor instead of the task's")
    study.add_argument("--metric", metavar="PKG.MOD:FN",
                       help="a metric(output, target) -> float (batch mean) instead of the "
                            "task's; needs --better")
    study.add_argument("--better", choices=("higher", "lower"),
                       help="whether a higher or lower --metric is better")
    study.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                       help="sgd (momentum 0.9) or adam (default: %(default)s)")
    study.add_argument("--val-fraction", type=float, default=0.1,
                       help="share of train held out for choosing the rate, in (0, 0.5] "
                            "(default: %(default)s)")
    study.add_argument("--workers", type=_bounded_int(1, _CORES, " (the number of cores)"),
                       help="worker processes, one torch thread each (default: all cores, up "
                            "to 8; 1 with --device cuda)")
    study.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="where the runs run: local (worker processes on this machine, the "
                            "default) or ray (one Ray task per run; needs normlab[ray]; the "
                            "factories must be importable on every node)")
    study.add_argument("--address", metavar="HOST:PORT", type=_path,
                       help="with --engine ray: the head of an existing Ray cluster; without "
                            "it a Ray instance is started on this machine for the study")
    study.add_argument("--no-progress", action="store_true", help="no progress bar")

    advise = sub.add_parser(
        "advise", help="the recommendation of a study folder, from its rows alone",
        description="Per batch size: the arm to use, its effect against as-is with a 95% "
                    "interval, whether decisive or a tie, and its cost (time per step), "
                    "computed from DIR/results.jsonl; the rule is printed.")
    advise.add_argument("dir", type=_path, help="a folder written by `normlab study`")

    from normlab.style.core import MAX_SIZE, MIN_SIZE

    style = sub.add_parser(
        "style", help="AdaIN style transfer of an image, offline",
        description="Stylize CONTENT with the colours and textures of STYLE by adaptive "
                    "instance normalization (Huang & Belongie 2017), optimizing the image "
                    "against an encoder's features on CPU. The encoder has random weights by "
                    "default (nothing is downloaded); --encoder loads a torchvision VGG-19 "
                    "state dict for the usual quality. Writes OUT and OUT's name with -strip "
                    "(content | style | result).")
    style.add_argument("content", nargs="?", help="content image file")
    style.add_argument("style", nargs="?", help="style image file")
    style.add_argument("--out", required=True, type=_path, help="output PNG file")
    style.add_argument("--demo", action="store_true",
                       help="use scikit-image's bundled astronaut (content) and "
                            "immunohistochemistry (style) images when none are given")
    style.add_argument("--size", default=256, type=_bounded_int(
        MIN_SIZE, MAX_SIZE, f" (the encoder's {MIN_SIZE}; memory grows with its square)"),
        help=f"longer side in pixels, {MIN_SIZE} to {MAX_SIZE} (default: %(default)s)")
    style.add_argument("--steps", type=_bounded_int(1, 10_000), default=150,
                       help="optimization steps, at most 10000 (default: %(default)s)")
    style.add_argument("--encoder", help="a torchvision VGG-19 state dict file (.pth)")
    style.add_argument("--seed", type=int, default=0,
                       help="seed of the random encoder (default: %(default)s)")

    from normlab.spec import STATISTICS_KINDS

    explain = sub.add_parser(
        "explain", help="draw which elements share one set of statistics",
        description="Print in words, and draw, the elements that share one mean and variance "
                    "for a normalization kind: the input as a shelf of N books of C pages of "
                    "H x W, in 3-D, for batch, layer, instance and group norm side by side "
                    "(and KIND), above the 2-D view of KIND (N panels of C channels x H*W "
                    "positions). From Python: normlab.explain(kind) returns the figure.")
    explain.add_argument("kind", choices=STATISTICS_KINDS)
    explain.add_argument("--shape", default="2,6,3,3", type=_shape,
                         help=f"N,C,H,W (or N,C,L), at most {_MAX_SHAPE} elements "
                              "(default: %(default)s)")
    explain.add_argument("--groups", type=_positive_int, default=2,
                         help="group norm's number of groups (default: %(default)s)")
    explain.add_argument("--out", type=_path,
                         help=f"write the picture to this .png file (a shape of at most "
                              f"{_MAX_PICTURE} elements)")
    return parser


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W integers, got {text!r}") from None
    if len(dims) < 3 or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected at least N,C and one position dim, all "
                                         f"positive, got {text!r}")
    if math.prod(dims) > _MAX_SHAPE:
        raise argparse.ArgumentTypeError(f"expected at most {_MAX_SHAPE} elements, got {text!r} "
                                         f"({math.prod(dims)})")
    return dims


def _print_summary(summary: dict) -> None:
    from normlab.lab.study import MAX_SEEDS
    from normlab.results.inference import STABLE
    from normlab.results.stats import seeds_words

    needed, rows = [], []  # rows: (claim, verdict, effect, interval, seeds, stability, note)
    for c in summary["claims"]:
        if c["effect"] is None:  # nothing was measured: say so, no number
            rows.append((c["id"], c["verdict"], None, None, None, None,
                         c.get("note") or "not measured"))
            continue
        ci = "-" if not c["ci"] else f"[{c['ci'][0]:.3g}, {c['ci'][1]:.3g}]"
        share = c.get("stability")
        stab = "-" if share is None else f"{share:.0%}" + (" fragile" if c.get("fragile")
                                                          else "")
        margin = (f"90% interval, equivalence margin +-{c['margin']:g}"
                  if c.get("test") == "equivalence" else None)
        extra = [t for t in (margin, seeds_words(c), c.get("note")) if t]
        rows.append((c["id"], c["verdict"], f"{c['effect']:.3g}", ci, str(c["n_seeds"]), stab,
                     "; ".join(extra)))
        for x in c.get("also") or []:  # further comparisons of the same runs
            if x["effect"] is None:
                rows.append((f"  also {x['comparison']}", x["verdict"], None, None, None,
                             None, x.get("note") or ""))
                continue
            xci = "-" if not x["ci"] else f"[{x['ci'][0]:.3g}, {x['ci'][1]:.3g}]"
            rows.append((f"  also {x['comparison']}", x["verdict"], f"{x['effect']:.3g}", xci,
                         str(x["n_seeds"]), "-", ""))
        if c.get("seeds_needed"):
            needed.append(c["seeds_needed"])
    if sys.stdout.isatty():  # a terminal: rich's table; a log or a pipe: plain columns
        _rich_table(rows)
    else:
        w = max([24] + [len(c["id"]) + 2 for c in summary["claims"]])  # the claim column
        print(f"{'claim':<{w}}{'verdict':<16}{'effect':>10}  {'95% interval':<22}{'seeds':>5}"
              f"  stability")
        for cid, verdict, eff, ci, seeds, stab, note in rows:
            if cid.startswith("  also "):  # a further comparison: one line, its own words
                print(f"{cid}: {verdict}" + (f", {eff} {ci}" if eff is not None else
                                              f", {note}" if note else ""))
            elif eff is None:
                print(f"{cid:<{w}}{verdict:<16}  {note}")
            else:
                print((f"{cid:<{w}}{verdict:<16}{eff:>10}  {ci:<22}{seeds:>5}  {stab:<14}"
                       + note).rstrip())
    if any(c.get("fragile") for c in summary["claims"]):
        print(f"fragile: fewer than {STABLE:.0%} of seed-bootstrap resamples give the same "
              "verdict")
    doable = [n for n in needed if n <= MAX_SEEDS]
    if doable:
        print(f"to decide the inconclusive claims, rerun the same command with "
              f"--seeds={max(doable)} (finished runs are kept)"
              + (f"; {len(needed) - len(doable)} would need more than --seeds allows "
                 f"({MAX_SEEDS})" if len(doable) < len(needed) else ""))
    elif needed:
        print(f"the inconclusive claims would need more seeds than --seeds allows ({MAX_SEEDS})")


def _rich_table(rows) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    colour = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow"}
    table = Table(box=None, header_style="bold")
    for name, justify in (("claim", "left"), ("verdict", "left"), ("effect", "right"),
                          ("95% interval", "left"), ("seeds", "right"),
                          ("stability", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # only the note wraps
    table.add_column("", ratio=1)
    for cid, verdict, eff, ci, seeds, stab, note in rows:  # Text: no rich markup in cells
        table.add_row(Text(cid), Text(verdict, style=colour.get(verdict, "")),
                      *(Text(v or "") for v in (eff, ci, seeds, stab, note)))
    Console().print(table)


def _warn(prog: str):
    return lambda message: print(f"normlab {prog}: warning: {message}", file=sys.stderr)


def _cannot_write(prog: str, exc: OSError) -> int:
    where = f" {exc.filename}" if exc.filename else ""
    print(f"normlab {prog}: error: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
    return 2


def _run_lab(args, extra: list[str]) -> int:
    from normlab import distributed

    distributed.init_from_torchrun()  # data-parallel under torchrun; nothing otherwise
    try:
        return _run_lab_in(args, extra)
    finally:
        distributed.finish()


def _run_lab_in(args, extra) -> int:
    from normlab import distributed
    from normlab.lab.runner import RunFailed
    from normlab.lab.study import LabError, parse_overrides, run_lab
    from normlab.report import render_report

    try:
        overrides = parse_overrides(extra)
        only = None if args.only is None else [t.strip() for t in args.only.split(",")
                                               if t.strip()]
        preset = "quick" if args.quick else "full" if args.full else "default"
        # the page is rendered inside the lab's lock; the lab has warned of skipped lines
        result = run_lab(args.out, preset=preset, only=only, seeds=args.seeds,
                         workers=args.workers, overrides=overrides,
                         progress=not args.no_progress, render=render_report,
                         engine=args.engine, address=args.address)
    except (LabError, RunFailed) as exc:
        print(f"normlab lab: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk: the rows appended so far are valid
        return _cannot_write("lab", exc)
    except KeyboardInterrupt:
        print(f"\nnormlab lab: interrupted; finished runs are saved in {args.out}/results.jsonl"
              " - rerun the same command to resume", file=sys.stderr)
        return 130
    counts = result["counts"]
    if distributed.rank() != 0:
        return 0
    for message in counts["skipped"]:
        print(f"normlab lab: warning: {args.out}/results.jsonl {message}; skipped (its run is "
              "redone)", file=sys.stderr)
    for cid, why in result["settings"].get("skipped", {}).items():
        print(f"normlab lab: warning: claim {cid} skipped: {why}", file=sys.stderr)
    print(f"{counts['ran']} runs trained, {counts['already_done']} already done "
          f"({counts['planned']} planned)")
    _print_summary(result["summary"])  # what the report wrote, computed from the rows
    print(f"report: {args.out}/index.html")
    return 0


def _run_compare(args) -> int:
    from normlab.report import ReportError, compare_folders

    out = args.out or "normlab-compare.html"
    try:
        result = compare_folders(args.dir, args.other, out, warn=_warn("report"))
    except ReportError as exc:
        print(f"normlab report: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        return _cannot_write("report", exc)

    def one(v):
        if v is None:
            return "-"
        if v["effect"] is None:
            return f"{v['verdict']} (not measured)"
        share = "" if v.get("stability") is None else f", {v['stability']:.0%}" + (
            " fragile" if v.get("fragile") else "")
        return f"{v['verdict']} {v['effect']:.3g}{share}"
    print(f"A = {args.dir}\nB = {args.other}")
    print(f"{'claim':<24}{'A':<34}{'B':<34}flags")
    for c in result["claims"]:
        print(f"{c['id']:<24}{one(c['a']):<34}{one(c['b']):<34}{'; '.join(c['flags'])}")
    for line in result["differences"]:
        print(f"differs: {line}")
    n = sum(bool(c["flags"]) for c in result["claims"])
    print(f"{n} of {len(result['claims'])} claims disagree or differ; page: {out}")
    return 0


def _run_style(args, parser) -> int:
    from pathlib import Path

    from normlab.progress import Progress
    from normlab.style import (
        StyleError,
        demo_image,
        load_encoder,
        load_image,
        random_encoder,
        save_image,
        strip,
        stylize,
    )

    if (args.content is None) != (args.style is None):
        parser.error("give both CONTENT and STYLE, or neither with --demo")
    if args.content is None and not args.demo:
        parser.error("CONTENT and STYLE are required (or --demo)")
    out = Path(args.out)
    strip_path = out.with_name(out.stem + "-strip" + (out.suffix or ".png"))
    try:
        if out.suffix.lower() not in (".png", ""):
            raise StyleError(f"--out {out}: expected a .png file")
        if not out.parent.exists() or not os.access(out.parent if str(out.parent) else ".",
                                                    os.W_OK):
            raise StyleError(f"--out {out}: the folder {out.parent} does not exist or is not "
                             "writable")
        if args.content is None:
            content = demo_image("astronaut", args.size)
            style_img = demo_image("immunohistochemistry", args.size)
        else:
            content = load_image(args.content, args.size)
            style_img = load_image(args.style, args.size)
        encoder = load_encoder(args.encoder) if args.encoder else random_encoder(args.seed)
    except StyleError as exc:
        print(f"normlab style: error: {exc}", file=sys.stderr)
        return 2
    bar = Progress(args.steps, args.steps, unit="steps")
    result = stylize(content, style_img, encoder, steps=args.steps,
                     progress=lambda step, loss: bar.update(1))
    try:
        save_image(result, out if out.suffix else out.with_suffix(".png"))
        save_image(strip(content, style_img, result), strip_path)
    except OSError as exc:
        return _cannot_write("style", exc)
    print(f"stylized image: {out}\nstrip (content | style | result): {strip_path}")
    return 0


def _split_list(text: str, arg: str, kind):
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{arg}: expected comma-separated {kind.__name__} values, got "
                         f"{text!r}") from None


def _run_study(args) -> int:
    from normlab.lab.runner import RunFailed
    from normlab.lab.userstudy import StudyError, run_study
    from normlab.report import render_report
    from normlab.results.advice import advice_lines

    if args.workers is None and args.device == "cpu":
        args.workers = max(1, min(_CORES, 8))
    try:
        batch_sizes = _split_list(args.batch_sizes, "--batch-sizes", int)
        lrs = _split_list(args.lr, "--lr", float)
        result = run_study(args.model, args.data, args.out, workers=args.workers,
                           engine=args.engine, address=args.address,
                           progress=not args.no_progress, render=render_report,
                           norms=args.norms, batch_sizes=batch_sizes, lrs=lrs,
                           seeds=args.seeds, steps=args.steps, device=args.device,
                           task=args.task, loss=args.loss, metric=args.metric,
                           better=args.better, optimizer=args.optimizer,
                           val_fraction=args.val_fraction)
    except (StudyError, ValueError, RunFailed) as exc:
        print(f"normlab study: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        return _cannot_write("study", exc)
    except KeyboardInterrupt:
        print(f"\nnormlab study: interrupted; finished runs are saved in {args.out}/"
              "results.jsonl - rerun the same command to resume", file=sys.stderr)
        return 130
    counts = result["counts"]
    for message in counts["skipped"]:
        print(f"normlab study: warning: {args.out}/results.jsonl {message}; skipped (its run "
              "is redone)", file=sys.stderr)
    print(f"{counts['ran']} runs trained, {counts['already_done']} already done "
          f"({counts['planned']} planned)")
    print("\n".join(advice_lines(result["advice"])))
    print(f"report: {args.out}/index.html")
    return 0


def _run_advise(args) -> int:
    from pathlib import Path

    from normlab.results.advice import advice_lines, advise_folder

    if not (Path(args.dir) / "results.jsonl").is_file():
        print(f"normlab advise: error: {args.dir}: no results.jsonl here; is it a `normlab "
              "study` output folder?", file=sys.stderr)
        return 2
    print("\n".join(advice_lines(advise_folder(args.dir))))
    return 0


def main(argv=None) -> int:
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "lab":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "lab":
        bad = [e for e in extra if not (e.startswith("--") and "=" in e)]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides are --key=value)")
        return _run_lab(args, extra)
    if args.command == "study":
        return _run_study(args)
    if args.command == "advise":
        return _run_advise(args)
    if args.command == "report" and args.other is not None:
        return _run_compare(args)
    if args.command == "report" and args.out is not None:
        parser.error("argument --out: only with a second folder OTHER (the comparison page); "
                     "a folder's own page is DIR/index.html")
    if args.command == "report":
        from normlab.report import ReportError, render_report

        try:
            summary = render_report(args.dir, warn=_warn("report"))
        except ReportError as exc:
            print(f"normlab report: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # a full disk: the old page and summary stay whole
            return _cannot_write("report", exc)
        if "advice" in summary:  # a study folder: its recommendation
            from normlab.results.advice import advice_lines

            print("\n".join(advice_lines(summary["advice"])))
        _print_summary(summary)
        print(f"report: {args.dir}/index.html")
        return 0
    if args.command == "style":
        return _run_style(args, parser)
    if args.command == "explain":
        from normlab.report import describe

        if args.shape[1] % args.groups and args.kind == "group":
            parser.error(f"--groups {args.groups} does not divide the {args.shape[1]} channels "
                         "of --shape")
        if args.out and not args.out.lower().endswith(".png"):
            parser.error(f"argument --out: expected a .png file, got {args.out!r}")
        if args.out and math.prod(args.shape) > _MAX_PICTURE:
            parser.error(f"argument --out: a picture of at most {_MAX_PICTURE} elements, got "
                         f"--shape {','.join(map(str, args.shape))} "
                         f"({math.prod(args.shape)}); drop --out for the words alone")
        print(describe(args.kind, args.shape, args.groups))
        if args.out:
            import io

            from normlab.report.explain import explain
            from normlab.results import write_atomic

            buf = io.BytesIO()
            explain(args.kind, args.shape, args.groups).savefig(buf, format="png", dpi=110)
            try:
                write_atomic(args.out, buf.getvalue())
            except OSError as exc:
                return _cannot_write("explain", exc)
            print(f"picture: {args.out}")
        return 0
    if args.command == "bench":
        import torch

        from normlab.bench import run_bench

        try:
            run_bench(out=args.out, quick=args.quick, reps=args.reps,
                      dtype=getattr(torch, args.dtype), ops=args.ops, threads=args.threads)
        except OSError as exc:  # rows appended so far stay valid
            return _cannot_write("bench", exc)
        print(f"rows appended to {args.out}")
        return 0
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
