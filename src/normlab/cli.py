"""The ``normlab`` command: argparse subcommands. Bad arguments get one clear line and exit 2."""

from __future__ import annotations

import argparse
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
                       help="smaller shapes and fewer repetitions (about 15 s)")
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
    return parser


def main(argv=None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
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
