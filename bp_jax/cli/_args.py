"""The base every command shares: the one-line parser and UsageError."""

import argparse

from bp_jax.cli import interrupts


class UsageError(ValueError):
    """A bad command-line value, file or checkpoint: reported in one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and which never abbreviates options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message):
        interrupts.current().done()  # the outcome is decided: a signal now cannot add a second line
        self.exit(2, f"{self.prog}: error: {message}\n")
