"""The ``normlab`` command: argparse subcommands. Bad arguments get one clear line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys

import normlab

_DTYPES = ("float32", "float64", "bfloat16", "float16")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normlab",
        description="Normalization layers for PyTorch, and a lab that shows what they do.")
    parser.add_argument("--version", action="version", version=f"normlab {normlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from normlab.bench import CASES

    names = sorted({c.name for c in CASES})
    bench = sub.add_parser(
        "bench", help="time normlab against torch.nn on CPU (ratios, GB/s)",
        description="Time every normalization kind, normlab vs torch.nn, forward and "
                    "forward+backward, alternating the order in one process; append long-format "
                    "rows to a JSONL file and print a table. For stable figures run it under "
                    "jemalloc (LD_PRELOAD), e.g. ../shared/tools/jemalloc-run normlab bench.")
    bench.add_argument("--quick", action="store_true",
                       help="smaller shapes and fewer repetitions (about 10 s)")
    bench.add_argument("--out", default="normlab-bench.jsonl",
                       help="JSONL file the rows are appended to (default: %(default)s)")
    bench.add_argument("--reps", type=_positive_int, default=None,
                       help="alternating repetitions per row (default: 40, or 6 with --quick)")
    bench.add_argument("--dtype", choices=_DTYPES, default="float32",
                       help="input dtype (default: %(default)s)")
    bench.add_argument("--ops", nargs="+", choices=names, metavar="OP",
                       help=f"only these ops: {', '.join(names)}")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="torch intra-op threads (default: torch's choice)")

    from normlab.lab.claims import BASE
    from normlab.lab.study import CLAIM_IDS

    lab = sub.add_parser(
        "lab", help="train small networks with every normalization; write a report",
        description="Train small networks with every normalization kind on built-in data "
                    "(MNIST-1D, scikit-learn's digits and breast-cancer table), decide each "
                    "classic claim from the rows, and write a report folder: index.html, "
                    "results.jsonl (one row per finished run, appended as it finishes), "
                    "summary.json, claims.json, config.json. Rerunning into the same folder "
                    "resumes: finished runs are not repeated. Under torchrun (e.g. torchrun "
                    "--standalone --nproc_per_node=2 -m normlab lab) every run is trained "
                    "data-parallel over the processes with synchronized batch norm.",
        epilog="Overrides of the shared fixed settings, checked against their defaults' types: "
               + ", ".join(f"--{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
                           for k, v in BASE.items())
               + ". A claim that sets a key itself keeps its own value.")
    lab.add_argument("--out", default="normlab-report",
                     help="report folder (default: %(default)s)")
    preset = lab.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true",
                        help="smoke run: 2 seeds, 15%% of the steps (~35 s on 2 cores)")
    preset.add_argument("--full", action="store_true",
                        help="5 seeds, twice the steps, wider grids, and the slow claims "
                             "(style-contrast, recurrent-nets, online-recurrent): ~16 min on 2 "
                             "cores")
    lab.add_argument("--only", metavar="ID,...",
                     help=f"only these claims: {', '.join(CLAIM_IDS)}")
    lab.add_argument("--seeds", type=_positive_int, help="seeds per arm (default: by preset)")
    lab.add_argument("--workers", type=_positive_int,
                     help="worker processes, one torch thread each (default: all cores)")
    lab.add_argument("--no-progress", action="store_true", help="no progress bar")

    report = sub.add_parser("report", help="re-render a lab folder's page from its rows",
                            description="Recompute every verdict from DIR/results.jsonl and "
                                        "write DIR/summary.json and DIR/index.html.")
    report.add_argument("dir", help="a folder written by `normlab lab`")

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
    style.add_argument("--out", required=True, help="output PNG file")
    style.add_argument("--demo", action="store_true",
                       help="use scikit-image's bundled astronaut (content) and "
                            "immunohistochemistry (style) images when none are given")
    style.add_argument("--size", type=_positive_int, default=256,
                       help="longer side in pixels (default: %(default)s)")
    style.add_argument("--steps", type=_positive_int, default=150,
                       help="optimization steps (default: %(default)s)")
    style.add_argument("--encoder", help="a torchvision VGG-19 state dict file (.pth)")
    style.add_argument("--seed", type=int, default=0,
                       help="seed of the random encoder (default: %(default)s)")

    from normlab.spec import KINDS

    explain = sub.add_parser(
        "explain", help="draw which elements share one set of statistics",
        description="Print in words, and draw as N panels of C channels x H*W positions, the "
                    "elements that share one mean and variance for a normalization kind.")
    explain.add_argument("kind", choices=KINDS)
    explain.add_argument("--shape", default="2,6,3,3", type=_shape,
                         help="N,C,H,W (or N,C,L) (default: %(default)s)")
    explain.add_argument("--groups", type=_positive_int, default=2,
                         help="group norm's number of groups (default: %(default)s)")
    explain.add_argument("--out", help="write the picture to this PNG file")
    return parser


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W integers, got {text!r}") from None
    if len(dims) < 3 or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected at least N,C and one position dim, all "
                                         f"positive, got {text!r}")
    return dims


def _print_summary(summary: dict) -> None:
    print(f"{'claim':<24}{'verdict':<16}{'effect':>10}  {'95% interval':<22}{'seeds':>5}")
    for c in summary["claims"]:
        eff = "-" if c["effect"] is None else f"{c['effect']:.3g}"
        ci = "-" if not c["ci"] else f"[{c['ci'][0]:.3g}, {c['ci'][1]:.3g}]"
        print(f"{c['id']:<24}{c['verdict']:<16}{eff:>10}  {ci:<22}{c['n_seeds']:>5}")


def _run_lab(args, extra: list[str]) -> int:
    from normlab import distributed
    from normlab.lab.study import LabError, parse_overrides, run_lab
    from normlab.report import render_report

    distributed.init_from_torchrun()  # data-parallel under torchrun; nothing otherwise
    try:
        return _run_lab_in(args, extra, LabError, parse_overrides, run_lab, render_report)
    finally:
        distributed.finish()


def _run_lab_in(args, extra, LabError, parse_overrides, run_lab, render_report) -> int:
    from normlab import distributed

    try:
        overrides = parse_overrides(extra)
        only = [t.strip() for t in args.only.split(",") if t.strip()] if args.only else None
        preset = "quick" if args.quick else "full" if args.full else "default"
        result = run_lab(args.out, preset=preset, only=only, seeds=args.seeds,
                         workers=args.workers, overrides=overrides,
                         progress=not args.no_progress)
    except LabError as exc:
        print(f"normlab lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nnormlab lab: interrupted; finished runs are saved in {args.out}/results.jsonl"
              " - rerun the same command to resume", file=sys.stderr)
        return 130
    counts = result["counts"]
    if distributed.rank() != 0:
        return 0
    if counts["skipped_lines"]:
        print(f"normlab lab: warning: skipped {counts['skipped_lines']} unreadable line(s) in "
              f"{args.out}/results.jsonl (a run cut short); those runs were redone",
              file=sys.stderr)
    summary = render_report(args.out)
    print(f"{counts['ran']} runs trained, {counts['already_done']} already done "
          f"({counts['planned']} planned)")
    _print_summary(summary)
    print(f"report: {args.out}/index.html")
    return 0


def _run_style(args, parser) -> int:
    from pathlib import Path

    from normlab.lab.runner import Progress
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
    save_image(result, out if out.suffix else out.with_suffix(".png"))
    save_image(strip(content, style_img, result), strip_path)
    print(f"stylized image: {out}\nstrip (content | style | result): {strip_path}")
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
    if args.command == "report":
        from normlab.report import ReportError, render_report

        try:
            summary = render_report(args.dir)
        except ReportError as exc:
            print(f"normlab report: error: {exc}", file=sys.stderr)
            return 2
        _print_summary(summary)
        print(f"report: {args.dir}/index.html")
        return 0
    if args.command == "style":
        return _run_style(args, parser)
    if args.command == "explain":
        from normlab.report import describe, draw

        if args.shape[1] % args.groups and args.kind == "group":
            parser.error(f"--groups {args.groups} does not divide the {args.shape[1]} channels "
                         "of --shape")
        print(describe(args.kind, args.shape, args.groups))
        if args.out:
            try:
                draw(args.kind, args.shape, args.groups).savefig(args.out, dpi=120)
            except OSError as exc:
                print(f"normlab explain: error: cannot write {args.out} "
                      f"({exc.strerror or exc})", file=sys.stderr)
                return 2
            print(f"picture: {args.out}")
        return 0
    if args.command == "bench":
        import torch

        from normlab.bench import run_bench

        if args.threads:
            torch.set_num_threads(args.threads)
        run_bench(out=args.out, quick=args.quick, reps=args.reps,
                  dtype=getattr(torch, args.dtype), ops=args.ops)
        print(f"rows appended to {args.out}")
        return 0
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
