"""The `lift-dist` command: `lift-dist {train,demo,params,shards,launch,sweep,predict,report} ...`.

Only the chosen sub-command's arguments module is imported to parse (lift_dist/commands/), then the
function it names runs. User errors print one line, no traceback, exit 2 (`run_command`, the one
error wrapper of every entry point: shards/build.py, launch/slurm.py and tune/sweep.py call `main`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lift_dist.commands import COMMANDS
from lift_dist.errors import LiftError, one_line
from lift_dist.lifecycle import report_failure

EXIT_USER_ERROR = 2


def top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lift-dist", description="LIFT / LIFT+ lightweight fine-tuning of CLIP, distributed.",
                                epilog="`lift-dist COMMAND --help` for a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def command_parser(name: str, prog: str | None = None) -> tuple[argparse.ArgumentParser, str]:
    module = importlib.import_module(f"lift_dist.commands.{name}")
    p = argparse.ArgumentParser(prog=prog or f"lift-dist {name}", description=getattr(module, "DESCRIPTION", COMMANDS[name]),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=getattr(module, "EPILOG", None))
    module.add_arguments(p)
    return p, module.RUN


def _target(spec: str):
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def run_command(prog: str, spec: str, args: argparse.Namespace) -> int:
    """Run a parsed command; user errors become one line on stderr and exit 2."""
    try:
        return int(_target(spec)(args) or 0)
    except LiftError as e:
        msg = f"{prog}: {getattr(e, 'label', 'error')}: {one_line(e)}"
        print(msg, file=sys.stderr, flush=True)
        report_failure(msg, secondary=getattr(e, "secondary", False))
        return getattr(e, "exit_code", EXIT_USER_ERROR)
    except OSError as e:  # disk full, permissions, a vanished mount: the file and the reason
        msg = f"{prog}: error: {one_line(e)}"
        print(msg, file=sys.stderr, flush=True)
        report_failure(msg)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        top_parser().print_help()
        return 0 if argv else EXIT_USER_ERROR
    name = argv[0]
    if name not in COMMANDS:
        top_parser().error(f"unknown command '{name}'; choose one of {', '.join(COMMANDS)}")
    parser, spec = command_parser(name, prog)
    args = parser.parse_args(argv[1:])
    return run_command(prog or f"lift-dist {name}", spec, args)


if __name__ == "__main__":
    raise SystemExit(main())
