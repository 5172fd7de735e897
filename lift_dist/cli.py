"""The `lift-dist` command: one sub-command per job. User errors print one line, no traceback."""

from __future__ import annotations

import argparse
import sys

from lift_dist.errors import LiftError


def build_parser() -> argparse.ArgumentParser:
    from lift_dist import demo, params, predict, report, train

    commands = (
        ("params", params, "trainable-parameter report for a model + module (no download)"),
        ("train", train, "train on a shard directory (one process, or one of N under torchrun/srun)"),
        ("predict", predict, "class probabilities for images or a shard split from a trained run"),
        ("report", report, "HTML page with plots comparing one or more runs"),
        ("demo", demo, "the embedded CPU demo (default job)"),
    )
    parser = argparse.ArgumentParser(prog="lift-dist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, help_text in commands:
        p = sub.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
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
