"""`bp-jax` (also `python -m bp_jax`): train an MLP, predict with it, export it, sweep learning rates and seeds, walk
through the documents' examples, check parity, or explain the backward pass.

One module per command, as pip lays its commands out: COMMANDS maps each name to its module and its
one-line help, and only the module of the command that runs is imported (`bp-jax --help` and `bp-jax demo`
load neither pandas, orbax nor matplotlib). Every command module has the same two entry points:

    add_arguments(parser)    # its options
    run(args) -> int         # what it does; the exit status

Commands never import each other: what several share lives beside them (`options`, `console`, `watch`,
`runs`, `folders`, `checkpoints`, `data`, `plots`, `distributed`). Bad values end with one line on stderr
and exit status 2; a diverged run exits with status 1; an interrupted one with 128 + the signal's number
(130 for Ctrl-C, 143 for SIGTERM) and one line, at any moment (`interrupts`); one whose output's reader left
(`| head`) ends quietly with 141, as Unix tools do.
"""

import gc
import importlib
import os
import sys
from types import ModuleType

from bp_jax.cli import _cache, interrupts
from bp_jax.cli._args import Parser, UsageError

#: command name -> (its module, its one-line help)
COMMANDS = {
    "train": ("bp_jax.cli.train", "train the seed MLP (10 → 5 → 1, ReLU, MSE, SGD) on real data"),
    "predict": ("bp_jax.cli.predict", "predict with a trained run: one value per row of a data file"),
    "export": ("bp_jax.cli.export", "a trained run as a jax.export program or an ONNX model, to run without bp_jax"),
    "sweep": ("bp_jax.cli.sweep", "train every (learning rate, seed) pair at once, as one program"),
    "demo": ("bp_jax.cli.demo", "the documents' examples: manual vs autodiff, side by side"),
    "check": ("bp_jax.cli.check", "the parity checks on every backend JAX sees, as a table"),
    "explain": (
        "bp_jax.cli.explain",
        "the graph jax.grad works on: every value and gradient, beside the hand-derived ones; a picture of it",
    ),
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name][0])


def build_parser(argv: list[str]) -> Parser:
    """The parser for `argv`: every command listed with its help, the options of the one named in
    `argv[0]` (the only module imported)."""
    parser = Parser(prog="bp-jax", description=" ".join(__doc__.split("\n\n")[0].split()))
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (_, summary) in COMMANDS.items():
        command = commands.add_parser(name, help=summary)
        if argv[:1] == [name]:
            command_module(name).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` names (default: sys.argv[1:]); its exit status. SIGINT and SIGTERM are
    handled from the first act on (`interrupts`). Run as the process's command (no `argv`), they are ignored
    once the outcome is decided, so that exit's teardown cannot be interrupted, and the objects left are frozen
    (`gc.freeze`) before returning: the process ends next, and its exit then skips a last garbage collection
    over them (about a second with jax, orbax and matplotlib loaded)."""
    if argv is not None:
        return _run(argv)
    status = _run(sys.argv[1:], until_exit=True)
    gc.freeze()
    return status


def _run(argv: list[str], *, until_exit: bool = False) -> int:
    """The command's exit status; its last line (an error, or `interrupted`) printed once the outcome is
    decided (`Signals.done`), so that a signal then cannot add a second."""
    label = f"bp-jax {argv[0]}" if argv[:1] and argv[0] in COMMANDS else "bp-jax"
    with interrupts.handled(label, until_exit=until_exit) as signals:
        command, line = "bp-jax", None
        try:
            args = build_parser(argv).parse_args(argv)
            command = f"bp-jax {args.command}"
            if hasattr(args, "compile_cache"):
                _cache.enable(args.compile_cache)
            status = command_module(args.command).run(args)
        except ModuleNotFoundError as err:
            missing = (err.name or str(err)).partition(".")[0]
            status = 2
            line = f"{command}: error: {missing} is missing; the command needs its extra: pip install 'bp_jax[cli]'"
        except BrokenPipeError:  # stdout's reader left (`| head -1`): end quietly, as Unix tools do (128 + SIGPIPE)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exit's flush cannot fail
            status = 141
        except (UsageError, OSError) as err:
            status, line = 2, f"{command}: error: {err}"
        except interrupts.Interrupted as interrupted:  # came while results were written: they are complete
            status, line = 128 + interrupted.number, f"{command}: interrupted"
        signals.done()
        if line is not None:
            print(line, file=sys.stderr)
        return status
