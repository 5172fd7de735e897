"""The `lift-dist` command: one sub-command per job. User errors print one line, no traceback."""

from __future__ import annotations

import argparse
import sys

from lift_dist.errors import LiftError


def build_parser() -> argparse.ArgumentParser:
    from lift_dist import demo, params, predict, report, train

    parser = argparse.ArgumentParser(prog="lift-dist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="trainable-parameter report for a model + module (no download)")
    params.add_arguments(p)
    p.set_defaults(handler=params.run)
    p = sub.add_parser("train", help="train on a shard directory (one process, or one of N under torchrun/srun)")
    train.add_arguments(p)
    p.set_defaults(handler=train.run)
    p = sub.add_parser("predict", help="class probabilities for images or a shard split from a trained run")
    predict.add_arguments(p)
    p.set_defaults(handler=predict.run)
    p = sub.add_parser("report", help="HTML page with plots comparing one or more runs")
    report.add_arguments(p)
    p.set_defaults(handler=report.run)
    p = sub.add_parser("demo", help="the embedded CPU demo (default job)")
    demo.add_arguments(p)
    p.set_defaults(handler=demo.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except LiftError as e:
        print(f"lift-dist {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
