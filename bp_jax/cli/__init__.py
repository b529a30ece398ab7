"""`bp-jax` (also `python -m bp_jax`): train an MLP, predict with it, sweep learning rates and seeds, walk through
the documents' examples, check parity, or explain the backward pass.

One module per subcommand, each with `register(commands)` adding its parser and the function it runs.
Bad values end with one line on stderr and exit status 2; a diverged run exits with status 1; an
interrupted one with 128 + the signal's number (130 for Ctrl-C).
"""

import importlib
import sys

from bp_jax.cli import _cache
from bp_jax.cli._args import Parser, UsageError

COMMANDS = ("train", "predict", "sweep", "demo", "check", "explain")


def build_parser() -> Parser:
    parser = Parser(prog="bp-jax", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"bp_jax.cli.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    command = "bp-jax"
    try:
        args = build_parser().parse_args(argv)
        command = f"bp-jax {args.command}"
        if hasattr(args, "compile_cache"):
            _cache.enable(args.compile_cache)
        return args.run(args)
    except ModuleNotFoundError as err:
        missing = err.name.partition(".")[0]
        print(f"{command}: error: {missing} is missing; the command needs its extra: pip install 'bp_jax[cli]'",
              file=sys.stderr)
    except (UsageError, OSError) as err:
        print(f"{command}: error: {err}", file=sys.stderr)
    except KeyboardInterrupt:  # a Ctrl-C that training did not catch (before it began, or a second one)
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    return 2
